"""The `thinkmesh` subcommands of the devnet role. Imports of heavy libraries stay inside handlers."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds this role's subcommands; each sets `handler=` to a function of the parsed args."""
