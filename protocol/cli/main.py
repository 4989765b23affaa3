"""The `thinkmesh` command line's root.

Each role owns its subcommands in its own `commands` module (`register(subparsers)`); this module
only mounts them, by module name, in the order `thinkmesh --help` lists them. It is the one place
in `protocol/` that reaches the roles above it, and it does so by name at run time, so the
protocol layer's imports stay one-way (`tests/test_layering.py`). Heavy imports (torch, hivemind,
web3) happen inside the command handlers, so `thinkmesh --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib import metadata

from thinkmesh.protocol.rules.errors import ProtocolError

COMMAND_MODULES = (
    "thinkmesh.protocol.cli.commands",
    "thinkmesh.protocol.cli.verify_evidence",
    "thinkmesh.node.ops.commands",
    "thinkmesh.node.serve.commands",
    "thinkmesh.coordinator.ops.commands",
    "thinkmesh.coordinator.ops.traces_commands",
    "thinkmesh.devnet.distill_commands",
    "thinkmesh.devnet.commands",
)


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
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
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
