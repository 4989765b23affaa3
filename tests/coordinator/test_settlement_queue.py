"""The settlement queue: chain errors are retried with backoff while rounds go on; each round is
settled once, in order; `recover` queues instead of raising; failures are logged rate-limited.

The first tests drive the queue's retry logic with a scripted chain (no I/O); the rest run it on a
real anvil: a paused ledger, a pool too small, an RPC that does not answer, a restart meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest

from tests.anvil_required import require_anvil
from thinkmesh.coordinator.settlement.round_settlement import RoundSettler, SettlementIntent, SettlementJournal
from thinkmesh.protocol.runtime.atomic_files import fsync_directory
from thinkmesh.coordinator.settlement.retry_queue import OpenJob, SettleJob, SettlementQueue
from thinkmesh.protocol.chain.errors import ContractRevertError, RpcUnreachableError
from thinkmesh.protocol.chain.ledger import Award, RoundStats, RoundStatus, settlement_hash, tokens

pytestmark = pytest.mark.timeout(90)
MODEL = b"\x3d" * 32


def intent_for(round_id: int, awards=(), done: bool = False) -> SettlementIntent:
    return SettlementIntent(round_id, bytes([round_id]) * 32, b"\x11" * 32, RoundStats.of(len(awards), 0, 0.5, 0.5),
                            tuple(awards), (), (), done=done, model_hash=MODEL)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedQueue(SettlementQueue):
    """A queue whose chain is a script: `fail_next` errors are raised first, then jobs succeed."""

    def __init__(self, journal, clock, **kwargs) -> None:
        super().__init__(None, journal, clock=clock, **kwargs)
        self.fail_next: list[Exception] = []
        self.done_jobs: list[tuple[str, int]] = []

    def _do(self, job) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.done_jobs.append((type(job).__name__, job.round_id))


def test_failures_back_off_doubling_and_jobs_run_in_order_once(tmp_path) -> None:
    clock = Clock()
    queue = ScriptedQueue(SettlementJournal(tmp_path), clock, retry_first_s=1.0, retry_max_s=5.0)
    queue.open_round(1, MODEL, b"\x01" * 32)
    queue.settle(intent_for(1))
    queue.settle(intent_for(1))  # queued twice (a re-sent close): settled once
    queue.open_round(2, MODEL, b"\x02" * 32)
    queue.settle(intent_for(2))
    down = RpcUnreachableError("http://127.0.0.1:1", "ConnectionError: refused")
    queue.fail_next = [down] * 4
    assert [queue.step() for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]  # doubling, capped
    backlog = queue.backlog()
    assert backlog["pending_rounds"] == [1, 2] and backlog["pending_openings"] == [1, 2]
    assert backlog["state"] == "retrying" and backlog["failed_attempts"] == 4 and "did not answer" in backlog["last_error"]
    while len(queue):
        assert queue.step() == 0.0
    assert queue.done_jobs == [("OpenJob", 1), ("SettleJob", 1), ("OpenJob", 2), ("SettleJob", 2)]
    assert queue.backlog()["state"] == "idle" and queue.backlog()["last_error"] is None


def test_failures_are_logged_rate_limited_saying_what_was_expected_and_what_came(tmp_path, caplog) -> None:
    clock = Clock()
    queue = ScriptedQueue(SettlementJournal(tmp_path), clock, retry_first_s=1.0, retry_max_s=1.0, log_every_s=60.0)
    queue.settle(intent_for(7))
    paused = ContractRevertError("settleRound", "EnforcedPause", {}, b"")
    queue.fail_next = [paused] * 30 + [RpcUnreachableError("http://127.0.0.1:1", "timed out")]
    with caplog.at_level(logging.WARNING, logger="thinkmesh.coordinator.settlement.retry_queue"):
        for _ in range(30):
            queue.step()
            clock.now += 1.0
        assert len(caplog.records) == 1  # thirty alike in thirty seconds: one line
        line = caplog.records[0].getMessage()
        assert "round 7's settlement is queued" in line and "expected it to go through" in line
        assert "reverted with EnforcedPause" in line and "training goes on" in line
        clock.now += 60.0
        queue.fail_next.insert(0, paused)
        queue.step()  # the same kind a minute later: logged again, with the count held back
        assert len(caplog.records) == 2 and "29 more like the last one held back" in caplog.records[1].getMessage()
        queue.step()  # another kind of failure: logged at once
        assert len(caplog.records) == 3 and "the RPC did not answer" in caplog.records[2].getMessage()
    assert queue.step() == 0.0 and queue.done_jobs == [("SettleJob", 7)]


def test_the_journal_fsyncs_its_directory_after_each_rename_and_unlink(tmp_path, monkeypatch) -> None:
    import thinkmesh.coordinator.settlement.round_settlement as settlement
    import thinkmesh.protocol.runtime.atomic_files as atomic_files

    synced = []
    monkeypatch.setattr(settlement, "fsync_directory", lambda directory: synced.append(directory))
    monkeypatch.setattr(atomic_files, "fsync_directory", lambda directory: synced.append(directory))
    journal = SettlementJournal(tmp_path / "journal")
    journal.write(intent_for(1))
    assert synced == [tmp_path, tmp_path / "journal"]  # the new directory's entry, then the rename
    journal.mark_done(intent_for(1))
    journal.write(intent_for(2))
    assert journal.discard_uncommitted(2) == [2] and synced[-1] == tmp_path / "journal"
    assert len(synced) == 5 and [i.done for i in journal.load()] == [True]
    fsync_directory(tmp_path)  # the real one works on a directory


# ---------------------------------------------------------------- on a real chain


@pytest.fixture(scope="module")
def chain():
    from thinkmesh.devnet.anvil import Anvil

    require_anvil()
    with Anvil(accounts=4) as anvil:
        yield anvil


@pytest.fixture
def ledger(chain):
    """A fresh ledger with two registered nodes; (coordinator client, admin client, node addresses, pool)."""
    from thinkmesh.protocol.chain.client import LedgerClient, deploy
    from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity

    admin, coordinator_account, *nodes = chain.accounts
    deployment = deploy(chain.rpc_url, admin.private_key, unbonding_delay_s=60, min_stake=tokens(1),
                        coordinator=coordinator_account.address)
    admin_client = LedgerClient.connect(chain.rpc_url, deployment, private_key=admin.private_key)
    admin_client.mint(admin.address, tokens(100))
    admin_client.fund(tokens(10))
    for n, account in enumerate(nodes):
        admin_client.mint(account.address, tokens(5))
        client = LedgerClient.connect(chain.rpc_url, deployment, private_key=account.private_key)
        client.register(bind_identity(NodeIdentity.from_seed(bytes([n + 1]) * 32),
                                      bytes.fromhex(account.private_key[2:])), tokens(5), "grpo", "")
    coordinator = LedgerClient.connect(chain.rpc_url, deployment, private_key=coordinator_account.private_key)
    return coordinator, admin_client, [a.address for a in nodes]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_round(settler: RoundSettler, round_id: int, awards) -> SettlementIntent:
    """What the round loop does with the settler: open, record, send; none of it waits on the chain."""
    settler.open_round(round_id, MODEL, bytes([round_id]) * 32)
    intent = dataclasses.replace(settler.record(round_id, bytes([round_id]) * 32, [], [], 0.5), awards=tuple(awards))
    assert intent.model_hash == MODEL  # remembered from the opening: a settle can open its round itself
    settler.journal.write(intent)
    settler.send(intent)
    return intent


def test_a_paused_ledger_and_a_short_pool_queue_rounds_that_then_settle_once_in_order(tmp_path, ledger) -> None:
    coordinator, admin, nodes = ledger
    settler = RoundSettler(SettlementJournal(tmp_path / "settlement"), coordinator)
    admin.pause()
    first = run_round(settler, 1, [Award(nodes[0], 4, 1_000_000, tokens(3))])
    second = run_round(settler, 2, [Award(nodes[1], 4, 1_000_000, tokens(30))])  # the pool holds 10
    assert settler.queue.step() > 0 and "EnforcedPause" in settler.backlog()["last_error"]
    assert settler.backlog()["pending_rounds"] == [1, 2] and coordinator.round(1).status == RoundStatus.NONE
    admin.unpause()
    assert [settler.queue.step() for _ in range(3)] == [0.0, 0.0, 0.0]  # round 1 opens and settles; round 2 opens
    assert settler.queue.step() > 0 and "PayoutExceedsPool" in settler.backlog()["last_error"]
    assert settler.backlog()["pending_rounds"] == [2] and settler.backlog()["settled_through"] == 1
    admin.fund(tokens(30))
    assert settler.queue.step() == 0.0 and settler.backlog()["state"] == "idle"
    for intent in (first, second):
        record = coordinator.round(intent.round_id)
        assert record.status == RoundStatus.SETTLED
        assert record.settlement_hash == settlement_hash(intent.round_id, intent.seed, intent.traces_root,
                                                         intent.awards, intent.stats, intent.details)
        assert len(coordinator.events.settlements(round_id=intent.round_id)) == 1
    assert coordinator.node(nodes[1]).claimable == tokens(30)
    assert [i.done for i in settler.journal.load()] == [True, True]


def test_recover_with_the_chain_away_queues_and_a_later_start_settles(tmp_path, chain, ledger) -> None:
    from thinkmesh.protocol.chain.client import LedgerClient

    coordinator, _, nodes = ledger
    journal = SettlementJournal(tmp_path / "settlement")
    journal.write(intent_for(1, [Award(nodes[0], 4, 1_000_000, tokens(2))]))
    journal.write(intent_for(2, [Award(nodes[1], 4, 1_000_000, tokens(1))]))
    journal.write(intent_for(3))  # not committed: dropped, the round re-runs
    dead = LedgerClient.offline(f"http://127.0.0.1:{closed_port()}", coordinator.deployment,
                                account=coordinator._signer()._account)
    away = RoundSettler(journal, dead)
    recovered = away.recover(next_round=3)  # no chain call: nothing to raise
    assert [(i.round_id, i.done) for i in recovered] == [(1, False), (2, False)]
    assert away.queue.step() > 0 and "did not answer" in away.backlog()["last_error"]

    back = RoundSettler(journal, coordinator)  # the restart after the chain came back
    back.recover(next_round=3)
    back.start()
    try:
        assert back.queue.wait_empty(30), back.backlog()
    finally:
        assert back.queue.shutdown()
    assert [(i.round_id, i.done) for i in journal.load()] == [(1, True), (2, True)]
    assert [s.round_id for s in coordinator.events.settlements()] == [1, 2]
    assert coordinator.node(nodes[0]).claimable == tokens(2)


def test_jobs_of_a_queue_are_kept_apart_by_kind_and_round() -> None:
    queue = SettlementQueue(None, None)
    queue.open_round(4, MODEL, b"\x04" * 32)
    queue.settle(intent_for(4))
    queue.open_round(4, MODEL, b"\x04" * 32)
    assert [type(j) for j in queue._jobs] == [OpenJob, SettleJob]
