"""`thinkmesh node run`: the node daemon's subcommand (node/ops/commands.py owns the `node` parser).

    thinkmesh node run --config node.toml                        peers from [network] or the ledger
    thinkmesh node run --config node.toml --rpc URL --ledger A   join from the chain alone

Bootstrap peers read from the ledger are probed before the DHT starts (node/work/bootstrap.py).
"""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `run` to the `node` command's subparsers."""
    run = commands.add_parser(
        "run", help="join the mesh: follow rounds, run rollouts, send gradients",
        description="Configured by a TOML file plus THINKMESH_NODE__SECTION__KEY=value overrides.",
    )
    run.add_argument("--config", required=True, help="node TOML file")
    run.add_argument("--rpc", help="EVM JSON-RPC URL; fills [chain] rpc_url")
    run.add_argument("--ledger", help="ThinkMeshLedger address; fills [chain] ledger (bootstrap peers are read there)")
    run.set_defaults(handler=run_node)


def run_node(args: argparse.Namespace, contribution_hook=None) -> int:
    """Runs the node until stopped. `contribution_hook` (node/work/contribution_hook.py) is for the devnet's
    and the tests' entrypoints (`thinkmesh devnet node-run`); `node run` passes none."""
    from thinkmesh.node.work.bootstrap import complete_network
    from thinkmesh.node.config import load_node_config
    from thinkmesh.node.work.daemon import NodeDaemon
    from thinkmesh.protocol.keys.keystore import resolve_password, unlock_keys
    from thinkmesh.protocol.runtime.observability import install_json_log
    from thinkmesh.protocol.runtime.process_lifecycle import run_until_stopped

    config = load_node_config(args.config, rpc_url=getattr(args, "rpc", None), ledger=getattr(args, "ledger", None))
    password_file = str(config.identity.password_file) if config.identity.password_file else None
    keys = unlock_keys(config.identity.key_dir, resolve_password(password_file))
    install_json_log(config.data_dir / "node.log.jsonl")
    config = complete_network(config)

    run_until_stopped(NodeDaemon(config, keys.identity, keys, contribution_hook=contribution_hook).run)
    return 0

