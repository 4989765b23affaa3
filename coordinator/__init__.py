"""The coordinator: rounds, verification, aggregation, checkpoints, settlement, the dashboard."""
