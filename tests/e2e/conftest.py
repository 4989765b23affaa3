"""Fixtures shared by the devnet end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.anvil_required import require_anvil


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache for the whole session: every `devnet up` with the same recipe builds its
    cold-started model once, as a user's second `up` finds it cached."""
    require_anvil()
    return tmp_path_factory.mktemp("devnet-model-cache")
