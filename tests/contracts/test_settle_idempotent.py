"""A settlement retried after a crash, a timeout or a race never pays twice, and reports success."""

from __future__ import annotations

import dataclasses

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.errors import SettlementConflictError
from thinkmesh.protocol.chain.transactions import TransactionSender
from thinkmesh.protocol.chain.ledger import Award, RoundStats, RoundStatus, seed_commitment, settlement_hash, tokens

from .conftest import MIN_STAKE, Actors

pytestmark = pytest.mark.timeout(120)

SEED = b"\x5e" * 32
ROOT = b"\x7a" * 32


@pytest.fixture
def open_round(actors: Actors) -> list[Award]:
    """Round 1 open; alice and bob registered; the awards the coordinator means to settle."""
    actors.alice.register(actors.binding(actors.alice, 1), MIN_STAKE, "grpo", "")
    actors.bob.register(actors.binding(actors.bob, 2), MIN_STAKE, "dapo", "")
    actors.coordinator.open_round(1, b"\x3d" * 32, seed_commitment(SEED))
    return [Award(actors.bob.address, 10, 900_000, tokens(4)), Award(actors.alice.address, 12, 950_000, tokens(6))]


def test_same_settlement_twice_pays_once(actors: Actors, open_round: list[Award]) -> None:
    first = actors.coordinator.settle_round(1, SEED, ROOT, open_round)
    again = actors.coordinator.settle_round(1, SEED, ROOT, list(reversed(open_round)))
    assert not first.already_settled and again.already_settled
    assert first.settlement_hash == again.settlement_hash == settlement_hash(1, SEED, ROOT, open_round)
    assert actors.coordinator.round(1).settlement_hash == first.settlement_hash
    assert actors.alice.node().claimable == tokens(6)
    assert actors.coordinator.pool_totals().claimable == tokens(10)


def test_different_settlement_of_a_settled_round_is_a_conflict(actors: Actors, open_round: list[Award]) -> None:
    actors.coordinator.settle_round(1, SEED, ROOT, open_round)
    changed = [dataclasses.replace(open_round[0], payout=tokens(40)), open_round[1]]
    with pytest.raises(SettlementConflictError) as caught:
        actors.coordinator.settle_round(1, SEED, ROOT, changed)
    assert caught.value.round_id == 1
    assert caught.value.attempted_hash == settlement_hash(1, SEED, ROOT, changed)
    assert actors.bob.node().claimable == tokens(4)


def test_retry_after_a_crash_that_left_the_first_settlement_mined(actors: Actors, open_round: list[Award]) -> None:
    coordinator = actors.coordinator
    # The first attempt went out through another client (the coordinator process that crashed).
    crashed = type(coordinator).connect(coordinator.rpc_url, coordinator.deployment, private_key=_key_of(actors))
    crashed.settle_round(1, SEED, ROOT, open_round)
    retried = coordinator.settle_round(1, SEED, ROOT, open_round)
    assert retried.already_settled
    assert actors.alice.node().claimable == tokens(6)


def test_retry_racing_a_pending_first_settlement(
    anvil: Anvil, actors: Actors, open_round: list[Award], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first settlement is still in the mempool when the retry is sent: both land in one block,
    the retry reverts on chain, the client replays it to decode RoundAlreadySettled, and reports success."""
    replayed = []
    explain = TransactionSender._explain_failure
    monkeypatch.setattr(
        TransactionSender, "_explain_failure", lambda self, *args: replayed.append(args) or explain(self, *args)
    )
    coordinator = actors.coordinator
    web3 = coordinator.web3
    payload = [award.as_abi() for award in sorted(open_round, key=lambda a: int(a.node, 16))]
    anvil.rpc("evm_setAutomine", [False])
    try:
        web3.eth.send_transaction(
            {
                "from": coordinator.address,
                "to": coordinator.deployment.ledger,
                "gas": 1_000_000,
                "data": coordinator.ledger.functions.settleRound(
                    1, SEED, ROOT, payload, RoundStats().as_abi()
                )._encode_transaction_data(),
            }
        )
        assert coordinator.round(1).status == RoundStatus.OPEN  # not mined yet
        anvil.rpc("evm_setIntervalMining", [1])
        restarted = type(coordinator).connect(coordinator.rpc_url, coordinator.deployment, private_key=_key_of(actors))
        retried = restarted.settle_round(1, SEED, ROOT, open_round)
    finally:
        anvil.rpc("evm_setIntervalMining", [0])
        anvil.rpc("evm_setAutomine", [True])
    assert retried.already_settled
    assert len(replayed) == 1, "the retry should have been mined, reverted, and replayed"
    assert coordinator.round(1).status == RoundStatus.SETTLED
    assert actors.alice.node().claimable == tokens(6)
    assert coordinator.pool_totals().claimable == tokens(10)


def test_retry_whose_read_missed_the_settlement_still_succeeds(
    actors: Actors, open_round: list[Award], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the pre-check read a stale OPEN round, the contract's RoundAlreadySettled answer is used instead."""
    coordinator = actors.coordinator
    coordinator.settle_round(1, SEED, ROOT, open_round)
    stale = coordinator.round(1)
    monkeypatch.setattr(coordinator, "round", lambda round_id: dataclasses.replace(stale, status=RoundStatus.OPEN))
    retried = coordinator.settle_round(1, SEED, ROOT, open_round)
    assert retried.already_settled
    assert actors.bob.node().claimable == tokens(4)


def _key_of(actors: Actors) -> str:
    return actors.coordinator._signer()._account.key.hex()  # the same coordinator key, another process
