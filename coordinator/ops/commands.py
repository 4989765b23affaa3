"""The `thinkmesh` subcommands of the coordinator role. Imports of heavy libraries stay inside handlers."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds this role's subcommands; each sets `handler=` to a function of the parsed args."""
    coordinator = subparsers.add_parser("coordinator", help="run the round coordinator")
    commands = coordinator.add_subparsers(dest="coordinator_command", metavar="COMMAND")
    run = commands.add_parser(
        "run", help="announce rounds, take contributions, aggregate, serve the model",
        description="Configured by a TOML file plus THINKMESH_COORDINATOR__SECTION__KEY=value overrides.",
    )
    run.add_argument("--config", required=True, help="coordinator TOML file")
    run.set_defaults(handler=run_coordinator)

    dashboard = subparsers.add_parser(
        "dashboard", help="serve the read-only rewards dashboard for a ledger on any EVM chain",
        description="Reads everything from the chain: no coordinator needed.",
    )
    dashboard.add_argument("--rpc", required=True, help="EVM JSON-RPC URL")
    dashboard.add_argument("--ledger", required=True, help="ThinkMeshLedger contract address")
    dashboard.add_argument("--from-block", type=int, default=0, help="the ledger's deployment block (speeds up event scans)")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8600)
    dashboard.add_argument("--evidence-dir", type=Path, help="directory of evidence files to link from slashing events")
    dashboard.add_argument("--find-servers", action="store_true",
                           help="look up the nodes serving each model version in the DHT (`thinkmesh serve --announce`)")
    dashboard.add_argument("--initial-peers", nargs="*", default=[],
                           help="DHT multiaddrs for --find-servers (default: the ledger's bootstrap list)")
    dashboard.set_defaults(handler=run_dashboard)


def run_coordinator(args: argparse.Namespace, settlement_hook=None) -> int:
    """Runs the coordinator until stopped. `settlement_hook` (settlement.py's crash points) is for the
    devnet's and the tests' entrypoint (`thinkmesh devnet coordinator-run`); `coordinator run` passes none."""
    from thinkmesh.coordinator.config import load_coordinator_config
    from thinkmesh.coordinator.work.daemon import Coordinator
    from thinkmesh.protocol.keys.keystore import resolve_password, unlock_keys
    from thinkmesh.protocol.runtime.observability import install_json_log
    from thinkmesh.protocol.runtime.process_lifecycle import run_until_stopped

    config = load_coordinator_config(args.config)
    password_file = str(config.identity.password_file) if config.identity.password_file else None
    keys = unlock_keys(config.identity.key_dir, resolve_password(password_file))
    install_json_log(config.data_dir / "coordinator.log.jsonl")

    coordinator = Coordinator(config, keys.identity, evm_private_key=keys.evm_private_key, settlement_hook=settlement_hook)
    run_until_stopped(coordinator.run)
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from thinkmesh.coordinator.dashboard.server import serve_dashboard
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.runtime.process_lifecycle import run_until_stopped

    client = LedgerClient.connect(args.rpc, discover_deployment(args.rpc, args.ledger, from_block=args.from_block))
    find_servers = None
    if args.find_servers:
        from functools import partial

        from thinkmesh.coordinator.dashboard.server_lookup import start_or_report

        peers = args.initial_peers or client.bootstrap_peers()
        if not peers:
            raise SystemExit("dashboard --find-servers: expected --initial-peers or a bootstrap list on the ledger, "
                             "found neither")
        find_servers = partial(start_or_report, peers)
    run_until_stopped(lambda stop: serve_dashboard(client, args.host, args.port, args.evidence_dir, stop, find_servers))
    return 0
