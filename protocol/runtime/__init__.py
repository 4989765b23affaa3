"""What every long-running role needs: config files (`config_files`), logs and /metrics
(`observability`), children that die with their parent (`process_lifecycle`), and files a crash
leaves whole (`atomic_files`)."""
