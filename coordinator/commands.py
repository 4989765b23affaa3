"""The `thinkmesh` subcommands of the coordinator role. Imports of heavy libraries stay inside handlers."""

from __future__ import annotations

import argparse


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


def run_coordinator(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from thinkmesh.coordinator.config import load_coordinator_config
    from thinkmesh.coordinator.daemon import Coordinator
    from thinkmesh.protocol.keystore import resolve_password, unlock_keys
    from thinkmesh.protocol.observability import install_json_log

    config = load_coordinator_config(args.config)
    password_file = str(config.identity.password_file) if config.identity.password_file else None
    keys = unlock_keys(config.identity.key_dir, resolve_password(password_file))
    install_json_log(config.data_dir / "coordinator.log.jsonl")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Coordinator(config, keys.identity).run(stop)

    asyncio.run(main())
    return 0
