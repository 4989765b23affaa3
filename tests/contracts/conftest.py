"""Fixtures for tests that talk to a real anvil (from contracts/node_modules) and the deployed ledger.

One anvil and one deployment serve the whole session; every test runs inside an EVM snapshot that
is reverted afterwards, so tests see a fresh ledger without paying for a new chain each time.
Without the npm toolchain the chain tests skip locally, and fail under CI (CI=true), where a
missing install step must not pass silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.anvil_required import require_anvil

from thinkmesh.devnet.anvil import Anvil, DevAccount
from thinkmesh.protocol.chain.client import LedgerClient, deploy
from thinkmesh.protocol.rules.identity import IdentityBinding, NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import Deployment, tokens

UNBONDING_DELAY_S = 3_600
MIN_STAKE = tokens(10)
POOL = tokens(10_000)


def _anvil_or_skip() -> None:
    require_anvil()


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    _anvil_or_skip()
    chain = Anvil(accounts=8)
    chain.start()
    try:
        yield chain
    finally:
        chain.stop()


@pytest.fixture(scope="session")
def deployment(anvil: Anvil) -> Deployment:
    admin = anvil.accounts[0]
    deployed = deploy(anvil.rpc_url, admin.private_key, unbonding_delay_s=UNBONDING_DELAY_S, min_stake=MIN_STAKE)
    client = LedgerClient.connect(anvil.rpc_url, deployed, private_key=admin.private_key)
    client.mint(admin.address, POOL)
    client.fund(POOL)
    for account in anvil.accounts[1:]:
        client.mint(account.address, tokens(1_000))
    return deployed


@pytest.fixture(autouse=True)
def _isolated_chain(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reverts every chain change a test makes (only for tests that use the chain)."""
    if "deployment" not in request.fixturenames and "anvil" not in request.fixturenames:
        yield
        return
    chain: Anvil = request.getfixturevalue("anvil")
    request.getfixturevalue("deployment")
    snapshot = chain.snapshot()
    try:
        yield
    finally:
        chain.revert(snapshot)


@dataclass(frozen=True)
class Actors:
    """Clients for the run's roles: the admin (also coordinator and sponsor) and three nodes."""

    coordinator: LedgerClient
    alice: LedgerClient
    bob: LedgerClient
    carol: LedgerClient
    stranger_account: DevAccount
    accounts: tuple[DevAccount, ...]

    def binding(self, client: LedgerClient, tag: int) -> IdentityBinding:
        """An identity binding between a test Ed25519 key (seeded by `tag`) and `client`'s account."""
        return identity_binding(next(a for a in self.accounts if a.address == client.address), tag)


def identity_binding(account: DevAccount, tag: int) -> IdentityBinding:
    return bind_identity(NodeIdentity.from_seed(bytes([tag]) * 32), bytes.fromhex(account.private_key[2:]))


@pytest.fixture
def actors(anvil: Anvil, deployment: Deployment) -> Actors:
    def client(account: DevAccount) -> LedgerClient:
        return LedgerClient.connect(anvil.rpc_url, deployment, private_key=account.private_key)

    accounts = anvil.accounts
    return Actors(
        client(accounts[0]), client(accounts[1]), client(accounts[2]), client(accounts[3]), accounts[4], accounts
    )
