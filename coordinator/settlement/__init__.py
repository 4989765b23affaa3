"""Settling rounds on chain: the journal and the transactions of one round (`round_settlement`),
retried with backoff while rounds go on (`retry_queue`) over a watched connection
(`chain_connection`)."""
