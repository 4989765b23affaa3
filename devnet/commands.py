"""The `thinkmesh devnet` subcommands: up, status, down, join. Heavy imports stay inside handlers.

    thinkmesh devnet up [--nodes N] [--cheater MODE] [--rounds R] [--json] [--fresh] [--base-port P]
    thinkmesh devnet status [--json]
    thinkmesh devnet down
    thinkmesh devnet join [--name NAME] [--strategy S] [--key-dir DIR]
    thinkmesh devnet node-run --config FILE --cheat MODE            a cheating node (devnet/cheating_node.py)
    thinkmesh devnet coordinator-run --config FILE [--crash-at P]   a coordinator that crashes (devnet/crashing_coordinator.py)

`up`, `status`, `down` and `join` take `--state-dir` (default `$THINKMESH_HOME/devnet`, else `.thinkmesh/devnet`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thinkmesh.devnet import cheating_node, crashing_coordinator
from thinkmesh.devnet.layout import default_cache_dir, default_state_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds this role's subcommands; each sets `handler=` to a function of the parsed args."""
    devnet = subparsers.add_parser("devnet", help="a whole thinkmesh network on this machine")
    commands = devnet.add_subparsers(dest="devnet_command", metavar="COMMAND")

    up = commands.add_parser(
        "up", help="start anvil, the ledger, a coordinator, N nodes and the dashboard",
        description="Runs until Ctrl-C, `thinkmesh devnet down`, or --rounds R rounds. A second `up` resumes "
                    "the same chain, ledger and model; --fresh starts over.",
    )  # fmt: skip
    _state_dir_argument(up)
    up.add_argument("--nodes", type=int, default=4, help="honest nodes, strategies cycling grpo, dapo, gspo, dr_grpo, rloo")
    up.add_argument("--cheater", metavar="MODE", default=None, help="add one adversarial node (see devnet/cheats.py)")
    up.add_argument("--rounds", type=int, default=None, help="stop after R rounds (settled on chain) and print a summary")
    up.add_argument("--json", action="store_true", help="with --rounds: the last stdout line is a JSON summary")
    up.add_argument("--fresh", action="store_true", help="discard the saved chain, keys and checkpoints first")
    up.add_argument("--base-port", type=int, default=8545, help="anvil P, dashboard P+1, coordinator P+2 (p2p), P+3 (status)")
    up.add_argument("--model", default="tiny", help="tiny (default) or micro (fast, for tests)")
    up.add_argument("--coldstart-examples", type=int, default=None, help="override the cold start's example count")
    up.add_argument("--adapter", type=int, nargs="?", const=8, default=None, metavar="RANK",
                    help="adapter rounds: a frozen base and a LoRA of RANK (default 8) on every linear layer; "
                         "switching an existing devnet between full and adapter rounds needs --fresh")
    up.add_argument("--cache-dir", type=Path, default=None, help="where cold-started models are kept (default: beside the state dir)")
    up.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    up.add_argument("--seed", default=None, metavar="TEXT",
                    help="the text the rounds' seeds derive from (prompts, sampling streams): another run of the same "
                         "devnet to see the spread")
    up.set_defaults(handler=up_command)

    status = commands.add_parser("status", help="show the running devnet and what the chain records")
    _state_dir_argument(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=status_command)

    down = commands.add_parser("down", help="stop the devnet started by `devnet up` (its chain state is kept)")
    _state_dir_argument(down)
    down.set_defaults(handler=down_command)

    join = commands.add_parser("join", help="add your own node to the running devnet (funded and registered for you)")
    _state_dir_argument(join)
    join.add_argument("--name", default="guest", help="the node's name (its keys and data live under it)")
    join.add_argument("--strategy", default="rloo", help="grpo, dapo, gspo, dr_grpo or rloo")
    join.add_argument("--key-dir", type=Path, default=None,
                      help="your own key dir (`thinkmesh keys new`); password from THINKMESH_KEY_PASSWORD")
    join.add_argument("--prepare-only", action="store_true", help="fund, register and write the config; do not run")
    join.set_defaults(handler=join_command)

    cheating_node.register(commands)
    crashing_coordinator.register(commands)


def _state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="the devnet's files (default $THINKMESH_HOME/devnet, else .thinkmesh/devnet)")


def _layout(args: argparse.Namespace):
    from thinkmesh.devnet.layout import DevnetLayout

    return DevnetLayout(args.state_dir or default_state_dir())


def up_command(args: argparse.Namespace) -> int:
    from thinkmesh.devnet.profiles import profile_named
    from thinkmesh.devnet.up import UpOptions, run_up

    layout = _layout(args)
    if args.json and args.rounds is None:
        print("thinkmesh: note: --json only changes the output of --rounds R runs", file=sys.stderr)
    options = UpOptions(
        state_dir=layout.root, cache_dir=args.cache_dir or (args.state_dir.parent / "cache" if args.state_dir else default_cache_dir()),
        profile=profile_named(args.model).with_coldstart_examples(args.coldstart_examples).with_adapter(args.adapter),
        nodes=args.nodes,
        cheater=args.cheater, rounds=args.rounds, fresh=args.fresh, base_port=args.base_port,
        dashboard=not args.no_dashboard, seed=args.seed,
    )  # fmt: skip
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    summary = run_up(options, say)
    if summary is not None:
        say(f"\nsummary after {summary.rounds} round(s) ({summary.settled_rounds} settled on chain in all):")
        say(summary.table())
        if args.json:
            print(summary.to_json(), flush=True)
    return 0


def status_command(args: argparse.Namespace) -> int:
    from thinkmesh.devnet.control import chain_summary, read_status

    layout = _layout(args)
    status = read_status(layout)
    summary = chain_summary(layout, status.state)
    if args.json:
        print(json.dumps({
            "running": status.running, "phase": status.state.phase, "rpc_url": status.state.rpc_url,
            "ledger": status.state.ledger, "dashboard_url": status.state.dashboard_url,
            "coordinator": status.coordinator, "chain": json.loads(summary.to_json()) if summary else None,
        }))  # fmt: skip
        return 0
    print("\n".join(status.lines()))
    if summary is not None:
        print(f"\non chain: {summary.settled_rounds} round(s) settled")
        print(summary.table())
    return 0


def down_command(args: argparse.Namespace) -> int:
    from thinkmesh.devnet.control import bring_down

    print(bring_down(_layout(args)))
    return 0


def join_command(args: argparse.Namespace) -> int:
    from thinkmesh.devnet.join import describe, prepare_join, run_in_foreground
    from thinkmesh.devnet.layout import DevnetState

    layout = _layout(args)
    plan = prepare_join(layout, args.name, args.strategy, args.key_dir)
    print(describe(plan, DevnetState.load(layout)), flush=True)
    if not args.prepare_only:
        run_in_foreground(plan, layout)
    return 0
