"""The operator's commands: `coordinator run`, `dashboard`, and `traces` export and verify."""
