"""The full life of two rounds on a real anvil: register -> open -> settle -> claim -> slash -> withdraw."""

from __future__ import annotations

import dataclasses

import base58
import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.errors import ChainError, ContractRevertError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.chain.ledger import (
    Award,
    Deployment,
    NodeStatus,
    RoundStatus,
    seed_commitment,
    settlement_hash,
    tokens,
)
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.rules.merkle import MerkleTree

from .conftest import MIN_STAKE, POOL, UNBONDING_DELAY_S, Actors

pytestmark = pytest.mark.timeout(120)

MODEL_V0 = b"\xa0" * 32
MODEL_V1 = b"\xa1" * 32


def test_two_rounds_register_open_settle_claim_slash_withdraw(anvil: Anvil, actors: Actors) -> None:
    coordinator, alice, bob, carol = actors.coordinator, actors.alice, actors.bob, actors.carol
    stake = tokens(50)
    for tag, (node, strategy) in enumerate(((alice, "grpo"), (bob, "dapo"), (carol, "gspo")), start=1):
        node.register(actors.binding(node, tag), stake, strategy, f"/ip4/127.0.0.1/tcp/{4000 + tag}")
    assert alice.node().status == NodeStatus.ACTIVE
    assert bob.node().strategy == "dapo"
    carol_key = actors.binding(carol, 3).ed25519_public_key
    assert coordinator.bound_node(carol_key) == carol.address
    assert coordinator.pool_totals().staked == 3 * stake

    # Round 1: alice and bob accepted; their traces committed in a Merkle root.
    seed1 = b"\x01" * 32
    coordinator.open_round(1, MODEL_V0, seed_commitment(seed1))
    assert coordinator.round(1).status == RoundStatus.OPEN
    traces = [bytes([0x70 + i]) * 32 for i in range(6)]
    tree = MerkleTree.from_items(traces)
    awards1 = [Award(alice.address, 24, 875_000, tokens(5)), Award(bob.address, 16, 625_000, tokens(3))]
    settled = coordinator.settle_round(1, seed1, tree.root, awards1)
    assert not settled.already_settled and settled.tx is not None

    round1 = coordinator.round(1)
    assert round1.status == RoundStatus.SETTLED
    assert (round1.node_count, round1.total_samples, round1.total_payout) == (2, 40, tokens(8))
    assert round1.seed == seed1 and round1.model_hash == MODEL_V0 and round1.traces_root == tree.root
    assert round1.settlement_hash == settlement_hash(1, seed1, tree.root, awards1)
    for index, trace in enumerate(traces):
        assert coordinator.verify_trace(1, trace, tree.proof(index))
    assert not coordinator.verify_trace(1, b"\x99" * 32, tree.proof(0))

    before = alice.token_balance()
    claimed, _ = alice.claim()
    assert claimed == tokens(5)
    assert alice.token_balance() == before + tokens(5)
    assert alice.node().claimable == 0
    assert bob.node().claimable == tokens(3)

    # Round 2: carol is caught; alice and bob are paid again.
    seed2 = b"\x02" * 32
    coordinator.open_round(2, MODEL_V1, seed_commitment(seed2))
    evidence = b"\xe5" * 32
    coordinator.slash(2, carol.address, tokens(20), SlashReason.REWARD_MISMATCH, evidence)
    assert coordinator.is_slashed(2, carol.address)
    assert carol.node().stake == stake - tokens(20)
    awards2 = [Award(bob.address, 8, 500_000, tokens(2)), Award(alice.address, 8, 500_000, tokens(2))]
    coordinator.settle_round(2, seed2, MerkleTree.from_items(traces[:2]).root, awards2)
    assert coordinator.round(2).total_slashed == tokens(20)

    bob_claimed, _ = bob.claim()
    assert bob_claimed == tokens(5)

    # Leaving: stake returns only after the unbonding delay; carol gets back what was not slashed.
    alice.begin_unbonding()
    carol.begin_unbonding()
    with pytest.raises(ContractRevertError) as early:
        alice.withdraw_stake()
    assert early.value.error_name == "UnbondingNotFinished"
    assert early.value.error_args["node"] == alice.address
    anvil.increase_time(UNBONDING_DELAY_S)
    alice_back, _ = alice.withdraw_stake()
    carol_back, _ = carol.withdraw_stake()
    assert (alice_back, carol_back) == (stake, stake - tokens(20))
    assert alice.node().status == NodeStatus.EXITED
    alice_claimed, _ = alice.claim()  # an exited node still claims what it earned
    assert alice_claimed == tokens(2)

    totals = coordinator.pool_totals()
    assert totals.balanced
    assert totals.funded == POOL and totals.slashed == tokens(20)
    assert totals.paid_out == tokens(12) and totals.claimable == 0
    assert totals.unallocated == POOL - tokens(12) + tokens(20)
    assert totals.staked == stake  # bob's
    assert coordinator.token_balance(coordinator.deployment.ledger) == totals.claimable + totals.unallocated + totals.staked

    # The public record, as a dashboard reads it.
    events = coordinator.events
    assert [(c.round_id, c.node, c.payout) for c in events.compensations(round_id=1)] == [
        (1, award.node, award.payout) for award in sorted(awards1, key=lambda a: int(a.node, 16))
    ]
    assert [c.round_id for c in events.compensations(node=alice.address)] == [1, 2]
    (slash,) = events.slashes()
    assert (slash.round_id, slash.node, slash.amount, slash.reason, slash.evidence_hash) == (
        2, carol.address, tokens(20), SlashReason.REWARD_MISMATCH, evidence,
    )  # fmt: skip
    assert [s.round_id for s in events.settlements()] == [1, 2]
    assert events.settlements(round_id=2)[0].seed == seed2
    assert [(r.node, r.strategy, r.binding_holds) for r in events.registrations()] == [
        (alice.address, "grpo", True), (bob.address, "dapo", True), (carol.address, "gspo", True),
    ]  # fmt: skip


def test_registration_records_the_identity_and_its_peer_id(actors: Actors) -> None:
    binding = actors.binding(actors.alice, 1)
    actors.alice.register(binding, MIN_STAKE, "grpo", "/ip4/127.0.0.1/tcp/4001")
    record = actors.alice.node()
    identity = NodeIdentity.from_seed(bytes([1]) * 32)
    assert record.ed25519_key == identity.public_key
    assert base58.b58encode(record.peer_id).decode() == identity.peer_id
    (registration,) = actors.coordinator.events.registrations()
    assert registration.identity_binding() == binding


def test_a_squatted_key_still_pays_its_owner(anvil: Anvil, deployment: Deployment, actors: Actors) -> None:
    """Anyone may register any key (the EVM cannot check Ed25519), but only the key's owner can sign
    its binding, so the coordinator maps the key to the owner's address, not the earlier squatter's."""
    owner_binding = actors.binding(actors.carol, 3)
    squatter = LedgerClient.connect(anvil.rpc_url, deployment, private_key=actors.stranger_account.private_key)
    squatter.register(dataclasses.replace(owner_binding, evm_address=squatter.address), MIN_STAKE, "grpo", "")
    assert actors.coordinator.bound_node(owner_binding.ed25519_public_key) is None
    actors.carol.register(owner_binding, MIN_STAKE, "gspo", "")
    assert actors.coordinator.bound_node(owner_binding.ed25519_public_key) == actors.carol.address
    squatted, owned = actors.coordinator.events.registrations()
    assert (squatted.node, squatted.binding_holds) == (squatter.address, False)
    assert (owned.node, owned.binding_holds) == (actors.carol.address, True)


def test_register_refuses_a_binding_for_another_account(actors: Actors) -> None:
    with pytest.raises(ChainError, match="identity binding for this client's account"):
        actors.alice.register(actors.binding(actors.bob, 2), MIN_STAKE, "grpo", "")


def test_metadata_update_and_added_stake(actors: Actors) -> None:
    alice = actors.alice
    alice.register(actors.binding(alice, 1), MIN_STAKE, "grpo", "")
    alice.update_metadata("rloo", "/dns4/alice.example/tcp/4001")
    alice.add_stake(tokens(5))
    record = alice.node()
    assert (record.strategy, record.endpoint, record.stake) == ("rloo", "/dns4/alice.example/tcp/4001", MIN_STAKE + tokens(5))
    assert record.ed25519_key == actors.binding(alice, 1).ed25519_public_key


def test_bootstrap_peers_are_added_and_removed(actors: Actors) -> None:
    coordinator = actors.coordinator
    peers = ["/ip4/127.0.0.1/tcp/31337/p2p/QmA", "/ip4/127.0.0.1/tcp/31338/p2p/QmB"]
    for peer in peers:
        coordinator.add_bootstrap_peer(peer)
    assert sorted(coordinator.bootstrap_peers()) == peers
    coordinator.remove_bootstrap_peer(peers[0])
    assert coordinator.bootstrap_peers() == peers[1:]
    with pytest.raises(ContractRevertError) as refused:
        actors.alice.add_bootstrap_peer("/ip4/10.0.0.1/tcp/1")
    assert refused.value.error_name == "AccessControlUnauthorizedAccount"


def test_a_restarted_coordinator_replaces_only_its_own_stale_bootstrap_entries(actors: Actors) -> None:
    from thinkmesh.protocol.chain.bootstrap_list import reconcile_bootstrap_peers

    coordinator = actors.coordinator
    relay = "/ip4/10.0.0.9/tcp/4001/p2p/QmRelay"
    first = ["/ip4/127.0.0.1/tcp/4001/p2p/QmCoord", "/ip4/10.0.0.2/tcp/4001/p2p/QmCoord"]
    coordinator.add_bootstrap_peer(relay)
    change = reconcile_bootstrap_peers(coordinator, "QmCoord", first)
    assert change.added == tuple(first) and change.removed == ()
    assert reconcile_bootstrap_peers(coordinator, "QmCoord", first).added == (), "nothing sent when up to date"
    moved = ["/ip4/127.0.0.1/tcp/5001/p2p/QmCoord", first[1]]
    change = reconcile_bootstrap_peers(coordinator, "QmCoord", moved)
    assert change == type(change)(added=(moved[0],), removed=(first[0],))
    assert sorted(coordinator.bootstrap_peers()) == sorted([relay, *moved]), "another peer's entry stays"
    with pytest.raises(ValueError, match="/p2p/QmCoord"):
        reconcile_bootstrap_peers(coordinator, "QmCoord", ["/ip4/127.0.0.1/tcp/1/p2p/QmOther"])
