"""Node keys at rest: encrypted keystores (`keystore`), backups (`backup`), the guard that an
identity runs in one process only (`account_lock`, `identity_guard`)."""
