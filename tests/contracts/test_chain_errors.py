"""Every way a chain call can fail surfaces as a typed `ChainError` that names what was expected."""

from __future__ import annotations

import dataclasses

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.devnet.ports import free_port
from thinkmesh.protocol.chain.client import LedgerClient, connect_web3
from thinkmesh.protocol.chain.errors import (
    ChainError,
    ChainIdMismatchError,
    ContractMissingError,
    ContractRevertError,
    RpcUnreachableError,
)
from thinkmesh.protocol.chain.ledger import Award, Deployment, seed_commitment, tokens
from thinkmesh.protocol.rules.slashing import SlashReason

from .conftest import MIN_STAKE, Actors

pytestmark = pytest.mark.timeout(120)

SEED = b"\x5e" * 32
MODEL = b"\x3d" * 32


def _revert(call, *args) -> ContractRevertError:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractRevertError) as caught:
        call(*args)
    return caught.value


def test_reverts_carry_the_decoded_custom_error(actors: Actors) -> None:
    coordinator, alice = actors.coordinator, actors.alice

    error = _revert(alice.register, actors.binding(alice, 1), MIN_STAKE - 1, "grpo", "")
    assert error.error_name == "StakeBelowMinimum"
    assert error.error_args == {"stake": MIN_STAKE - 1, "minStake": MIN_STAKE}
    assert "register reverted with StakeBelowMinimum(stake=" in str(error)

    error = _revert(alice.open_round, 1, MODEL, seed_commitment(SEED))
    assert error.error_name == "AccessControlUnauthorizedAccount"
    assert error.error_args["account"] == alice.address

    error = _revert(coordinator.settle_round, 9, SEED, b"\x00" * 32, [])
    assert (error.error_name, error.error_args) == ("RoundNotOpen", {"roundId": 9, "status": 0})

    coordinator.open_round(1, MODEL, seed_commitment(SEED))
    error = _revert(coordinator.settle_round, 1, b"\x00" * 32, b"\x00" * 32, [])
    assert error.error_name == "SeedMismatch"
    assert error.error_args["seedCommitment"] == seed_commitment(SEED)

    error = _revert(coordinator.settle_round, 1, SEED, b"\x00" * 32, [Award(actors.stranger_account.address, 1, 1, 1)])
    assert (error.error_name, error.error_args["node"]) == ("AwardToUnregisteredNode", actors.stranger_account.address)

    alice.register(actors.binding(alice, 1), MIN_STAKE, "grpo", "")
    error = _revert(coordinator.settle_round, 1, SEED, b"\x00" * 32, [Award(alice.address, 1, 1, tokens(10**9))])
    assert error.error_name == "PayoutExceedsPool"

    coordinator.slash(1, alice.address, 1, SlashReason.BAD_SIGNATURE, b"\x0e" * 32)
    error = _revert(coordinator.slash, 1, alice.address, 1, SlashReason.BAD_SIGNATURE, b"\x0e" * 32)
    assert error.error_args == {"roundId": 1, "node": alice.address}

    error = _revert(alice.claim)
    assert error.error_name == "NothingToClaim"

    coordinator.pause()
    error = _revert(alice.begin_unbonding)
    assert error.error_name == "EnforcedPause"
    coordinator.unpause()
    alice.begin_unbonding()


def test_token_errors_are_decoded_too(actors: Actors) -> None:
    error = _revert(actors.alice.mint, actors.alice.address, 1)
    assert error.error_name == "AccessControlUnauthorizedAccount"
    assert error.action == "ThinkMeshToken.mint"


def test_wrong_chain_id_names_expected_and_actual(anvil: Anvil, deployment: Deployment) -> None:
    wrong = dataclasses.replace(deployment, chain_id=1)
    with pytest.raises(ChainIdMismatchError) as caught:
        LedgerClient.connect(anvil.rpc_url, wrong)
    assert (caught.value.expected, caught.value.got) == (1, anvil.chain_id)
    assert "expected chain id 1" in str(caught.value) and str(anvil.chain_id) in str(caught.value)
    with pytest.raises(ChainIdMismatchError):
        connect_web3(anvil.rpc_url, expected_chain_id=5)


def test_unreachable_rpc_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RpcUnreachableError) as caught:
        connect_web3(url, timeout_s=2.0)
    assert caught.value.url == url and url in str(caught.value)


def test_rpc_that_dies_mid_session_is_reported_as_unreachable(deployment: Deployment) -> None:
    with Anvil(accounts=1) as chain:
        web3_chain_deployment = dataclasses.replace(deployment, chain_id=chain.chain_id)
        with pytest.raises(ContractMissingError) as missing:  # a fresh chain has no contracts yet
            LedgerClient.connect(chain.rpc_url, web3_chain_deployment)
        assert deployment.ledger in str(missing.value)
        client = LedgerClient(
            connect_web3(chain.rpc_url, timeout_s=2.0), chain.rpc_url, web3_chain_deployment, None
        )
        url = chain.rpc_url
    with pytest.raises(RpcUnreachableError) as caught:
        client.pool_totals()
    assert url in str(caught.value)


def test_read_only_client_refuses_to_send(anvil: Anvil, deployment: Deployment) -> None:
    reader = LedgerClient.connect(anvil.rpc_url, deployment)
    assert reader.pool_totals().balanced
    with pytest.raises(ChainError, match="read-only"):
        reader.fund(1)


def test_two_clients_of_one_key_in_one_process_share_the_nonce_queue(anvil: Anvil, deployment: Deployment) -> None:
    """The clash case of a second *process* is in test_nonce_manager.py; in one process, clients of
    one account take turns on one queue, so their transactions never collide."""
    key = anvil.accounts[5].private_key
    first = LedgerClient.connect(anvil.rpc_url, deployment, private_key=key)
    second = LedgerClient.connect(anvil.rpc_url, deployment, private_key=key)
    with pytest.raises(ContractRevertError):
        first.update_metadata("", "")  # refused at gas estimation: nothing signed, no nonce used
    funded = first.pool_totals().funded
    for client in (first, second, first):
        client.fund(1)  # approve + fund: two transactions each, interleaved across the clients
    assert first.pool_totals().funded == funded + 3
    assert first.pool_totals().balanced
