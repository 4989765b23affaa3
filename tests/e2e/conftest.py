"""Fixtures shared by the devnet end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache for the whole session: every `devnet up` with the same recipe builds its
    cold-started model once, as a user's second `up` finds it cached."""
    from thinkmesh.devnet.anvil import AnvilError, find_anvil_binary

    try:
        find_anvil_binary()
    except AnvilError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"anvil is not installed ({exc})")
    return tmp_path_factory.mktemp("devnet-model-cache")
