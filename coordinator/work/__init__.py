"""The coordinator's round loop: announce (`daemon`), take uploads (`p2p_service`, `intake`,
`intake_bounds`, `stream_guard`), verify (`verifier`), close (`round_close`), aggregate
(`aggregation`), evaluate (`evaluation`) and checkpoint (`checkpoint`)."""
