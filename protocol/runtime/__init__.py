"""What every long-running role needs: config files (`config_files`), logs and /metrics
(`observability`), and children that die with their parent (`process_lifecycle`)."""
