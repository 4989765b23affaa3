"""One rule for every test that needs anvil: a developer without the npm toolchain gets a skip that
says so; under CI (where `make test` installs it) a missing anvil is a failure, never a skip."""

from __future__ import annotations

import os

import pytest


def require_anvil() -> None:
    from thinkmesh.devnet.anvil import AnvilError, find_anvil_binary

    try:
        find_anvil_binary()
    except AnvilError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"anvil is not installed ({exc})")
