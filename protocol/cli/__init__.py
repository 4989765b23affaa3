"""The `thinkmesh` command line: its root (`main`) and the commands that need only the protocol
layer (`commands`: keys and the self-check; `verify_evidence`)."""
