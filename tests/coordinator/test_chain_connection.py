"""The registry cache: verification and the round loop never wait on a chain that is away.

`read_registry` is replaced by a scripted one (the chain's answers are not the point here): it can
hang until released, fail, or answer.
"""

from __future__ import annotations

import threading
import time

import pytest

import thinkmesh.coordinator.settlement.chain_connection as chain_connection
from thinkmesh.coordinator.settlement.chain_connection import RegistryCache
from thinkmesh.protocol.chain.errors import RpcUnreachableError

pytestmark = pytest.mark.timeout(30)
ALICE = {b"\xa1" * 32: "0x" + "a1" * 20}
BOB = {**ALICE, b"\xb0" * 32: "0x" + "b0" * 20}


class ScriptedChain:
    def __init__(self) -> None:
        self.answers: list = []
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def __call__(self, reader):
        self.calls += 1
        self.release.wait(10)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def chain(monkeypatch) -> ScriptedChain:
    scripted = ScriptedChain()
    monkeypatch.setattr(chain_connection, "read_registry", scripted)
    return scripted


def test_a_hung_read_costs_a_caller_at_most_wait_s_once_a_registry_is_known(chain, tmp_path) -> None:
    cache = RegistryCache(tmp_path / "registry.json", retry_s=60.0, wait_s=0.2)
    chain.answers = [ALICE, BOB]
    assert cache.read(None) == ALICE  # the first read waits in full
    chain.release.clear()  # the chain hangs
    started = time.monotonic()
    assert cache.read(None) == ALICE and time.monotonic() - started < 1.0
    assert cache.read(None) == ALICE and chain.calls == 2  # one read in flight at a time
    chain.release.set()
    deadline = time.monotonic() + 5
    while cache.read(None) != BOB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.read(None) == BOB


def test_a_failed_read_keeps_the_known_registry_and_rests_the_chain(chain, tmp_path, caplog) -> None:
    cache = RegistryCache(tmp_path / "registry.json", retry_s=60.0, wait_s=1.0)
    chain.answers = [ALICE, RpcUnreachableError("http://127.0.0.1:1", "timed out")]
    assert cache.read(None) == ALICE
    assert cache.read(None) == ALICE and chain.calls == 2
    assert cache.read(None) == ALICE and chain.calls == 2  # within retry_s: the chain is not asked
    assert "expected the node registry from the chain" in caplog.text and "1 node(s) it last listed" in caplog.text


def test_a_restart_with_the_chain_away_verifies_against_the_registry_kept_on_disk(chain, tmp_path) -> None:
    chain.answers = [ALICE]
    assert RegistryCache(tmp_path / "registry.json").read(None) == ALICE
    chain.answers = [RpcUnreachableError("http://127.0.0.1:1", "refused")]
    assert RegistryCache(tmp_path / "registry.json", wait_s=1.0).read(None) == ALICE
