"""The anvil launcher starts a real chain on a free local port and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinkmesh.devnet.anvil import Anvil, AnvilError, find_anvil_binary

from .conftest import _anvil_or_skip

pytestmark = pytest.mark.timeout(60)


def test_start_answers_rpc_with_funded_accounts_and_stop_ends_the_process() -> None:
    _anvil_or_skip()
    chain = Anvil(chain_id=4242, accounts=2)
    chain.start()
    try:
        process = chain._process
        assert int(chain.rpc("eth_chainId"), 16) == 4242
        assert chain.rpc_url.startswith("http://127.0.0.1:")
        assert len(chain.accounts) == 2
        assert int(chain.rpc("eth_getBalance", [chain.accounts[1].address, "latest"]), 16) > 0
        with pytest.raises(AnvilError, match="already running"):
            chain.start()
        before = int(chain.rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        assert chain.increase_time(3_600) >= before + 3_600
    finally:
        chain.stop()
    assert process is not None and process.poll() is not None
    assert not chain.running
    chain.stop()  # idempotent


def test_two_chains_run_side_by_side_on_different_ports() -> None:
    _anvil_or_skip()
    with Anvil(accounts=1) as first, Anvil(accounts=1) as second:
        assert first.port != second.port
        assert first.rpc("eth_blockNumber") == second.rpc("eth_blockNumber") == "0x0"


def test_binary_override_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THINKMESH_ANVIL", str(tmp_path / "missing-anvil"))
    with pytest.raises(AnvilError, match="not a file"):
        find_anvil_binary()


def test_a_binary_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\necho 'no chain today' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(AnvilError, match="(?s)exited with code 3.*no chain today"):
        Anvil(binary=fake).start(timeout_s=10)
