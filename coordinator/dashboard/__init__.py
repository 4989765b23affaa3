"""The dashboard: the chain's record read into a view (`ledger_view`, `ledger_snapshot`) and
served with its static page (`server`, `static/`)."""
