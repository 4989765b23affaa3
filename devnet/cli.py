"""The `thinkmesh` command line.

Each role owns its subcommands in its own `commands.py` (`register(subparsers)`); this module only
wires them together, which is why it lives in `devnet/`, the one layer allowed to import all the
others. Heavy imports (torch, hivemind, web3) happen inside the command handlers, so
`thinkmesh --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

from thinkmesh.coordinator import commands as coordinator_commands
from thinkmesh.coordinator import traces_commands
from thinkmesh.devnet import commands as devnet_commands
from thinkmesh.devnet import distill_commands
from thinkmesh.node import commands as node_commands
from thinkmesh.node.serve import commands as serve_commands
from thinkmesh.protocol import commands as protocol_commands
from thinkmesh.protocol import evidence_commands
from thinkmesh.protocol.errors import ProtocolError


def _version() -> str:
    try:
        return metadata.version("thinkmesh")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinkmesh",
        description="A decentralized, compensated GRPO fine-tuning network for reasoning models.",
    )
    parser.add_argument("--version", action="version", version=f"thinkmesh {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    roles = (protocol_commands, evidence_commands, node_commands, serve_commands, coordinator_commands, traces_commands,
             distill_commands, devnet_commands)
    for role in roles:
        role.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ProtocolError as exc:
        print(f"thinkmesh: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thinkmesh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
