"""One account's transactions in one process never collide, and retries resend the same signed bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
from eth_account import Account
from eth_utils import keccak

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.artifacts import RevertDecoder
from thinkmesh.protocol.chain.errors import NonceClashError, TransactionFailedError
from thinkmesh.protocol.chain.transactions import TransactionSender
from thinkmesh.protocol.chain.ledger import Deployment
from thinkmesh.protocol.chain.nonce_manager import AccountNonces, account_nonces


@pytest.fixture
def admin(anvil: Anvil, deployment: Deployment) -> LedgerClient:
    """The deployer: it holds the token's minter role, so `mint(…, 1)` is a cheap transaction to send."""
    return LedgerClient.connect(anvil.rpc_url, deployment, private_key=anvil.accounts[0].private_key)


def sender_for(client: LedgerClient, anvil: Anvil, **options) -> TransactionSender:
    account = Account.from_key(anvil.accounts[0].private_key)
    return TransactionSender(
        client.web3, account, client.deployment.chain_id, RevertDecoder.for_artifacts(), client.rpc_url, **options
    )


def mint_one(client: LedgerClient, to: str):
    return client.token.functions.mint(to, 1)


@pytest.fixture
def manual_mining(anvil: Anvil) -> Iterator[None]:
    anvil.rpc("evm_setAutomine", [False])
    try:
        yield
    finally:
        anvil.rpc("evm_setAutomine", [True])


def nonce_of(client: LedgerClient) -> int:
    return client.web3.eth.get_transaction_count(client.address, "latest")


@pytest.mark.timeout(120)
def test_threads_and_clients_of_one_account_take_turns(anvil: Anvil, deployment: Deployment, admin: LedgerClient) -> None:
    other = LedgerClient.connect(anvil.rpc_url, deployment, private_key=anvil.accounts[0].private_key)
    recipient = anvil.accounts[6].address
    start_nonce, start_balance = nonce_of(admin), admin.token_balance(recipient)
    results, errors = [], []

    def mint(client: LedgerClient) -> None:
        try:
            results.append(client.mint(recipient, 1))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=mint, args=(client,)) for client in (admin, other) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == []
    assert len(results) == 8 and len({r.tx_hash for r in results}) == 8
    assert nonce_of(admin) == start_nonce + 8
    assert admin.token_balance(recipient) == start_balance + 8
    assert account_nonces(deployment.chain_id, admin.address).outstanding == {}


@pytest.mark.timeout(60)
def test_a_send_whose_answer_was_lost_is_resent_as_the_same_transaction(
    anvil: Anvil, admin: LedgerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = sender_for(admin, anvil)
    sent: list[bytes] = []
    real_send = admin.web3.eth.send_raw_transaction

    def lossy_send(raw):
        sent.append(bytes(raw))
        result = real_send(raw)  # the node takes it (and anvil mines it) ...
        if len(sent) == 1:
            raise requests.exceptions.ReadTimeout("answer lost")  # ... but the answer never arrives
        return result

    monkeypatch.setattr(admin.web3.eth, "send_raw_transaction", lossy_send)
    monkeypatch.setattr("thinkmesh.protocol.chain.transactions.SEND_BACKOFF_S", 0.01)
    before = nonce_of(admin)
    result, receipt = sender.transact("mint", mint_one(admin, anvil.accounts[6].address))
    assert len(sent) == 2 and sent[0] == sent[1], "the retry must resend the identical signed bytes"
    assert result.tx_hash == keccak(sent[0]) and receipt["status"] == 1
    assert nonce_of(admin) == before + 1, "exactly one transaction was mined"


@pytest.mark.timeout(60)
def test_a_dropped_transaction_is_rebroadcast_not_replaced(
    anvil: Anvil, admin: LedgerClient, manual_mining: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = sender_for(admin, anvil, receipt_timeout_s=1.0, receipt_waits=2)
    sent: list[bytes] = []
    real_send = admin.web3.eth.send_raw_transaction

    def forgetful_node(raw):
        sent.append(bytes(raw))
        tx_hash = real_send(raw)
        if len(sent) == 1:  # the node loses it from its pool; it will mine whatever comes next
            anvil.rpc("anvil_dropTransaction", ["0x" + bytes(tx_hash).hex()])
            anvil.rpc("evm_setAutomine", [True])
        return tx_hash

    monkeypatch.setattr(admin.web3.eth, "send_raw_transaction", forgetful_node)
    before = nonce_of(admin)
    result, _ = sender.transact("mint", mint_one(admin, anvil.accounts[6].address))
    assert len(sent) == 2 and sent[0] == sent[1]
    assert result.tx_hash == keccak(sent[0])
    assert nonce_of(admin) == before + 1


@pytest.mark.timeout(60)
def test_an_unconfirmed_transaction_goes_out_again_before_the_next_one(
    anvil: Anvil, admin: LedgerClient, manual_mining: None
) -> None:
    nonces = AccountNonces(admin.deployment.chain_id, admin.address)
    sender = sender_for(admin, anvil, receipt_timeout_s=0.3, receipt_waits=1, nonces=nonces)
    before = nonce_of(admin)
    with pytest.raises(TransactionFailedError, match="re-sent as the same transaction"):
        sender.transact("mint", mint_one(admin, anvil.accounts[6].address))
    ((nonce, raw),) = nonces.outstanding.items()
    assert nonce == before
    anvil.rpc("anvil_dropTransaction", ["0x" + keccak(raw).hex()])  # lost by the node meanwhile
    anvil.rpc("evm_setAutomine", [True])
    result, _ = sender.transact("mint", mint_one(admin, anvil.accounts[7].address))
    assert admin.web3.eth.get_transaction_receipt(keccak(raw))["status"] == 1, "the first one was re-sent as is"
    assert admin.web3.eth.get_transaction(result.tx_hash)["nonce"] == before + 1
    assert nonces.outstanding == {} and nonce_of(admin) == before + 2


@pytest.mark.timeout(60)
def test_a_nonce_taken_by_another_process_is_a_clash_and_a_retry_succeeds(
    anvil: Anvil, deployment: Deployment, admin: LedgerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a second process on the account (which the account lock refuses in real use):
    # its own queue, sending between our nonce read and our send.
    elsewhere = LedgerClient.connect(anvil.rpc_url, deployment, private_key=anvil.accounts[0].private_key)
    intruder = sender_for(elsewhere, anvil, nonces=AccountNonces(deployment.chain_id, elsewhere.address))
    sender = sender_for(admin, anvil)
    real_count = admin.web3.eth.get_transaction_count
    raced = []

    def racing_count(address, block):
        count = real_count(address, block)
        if not raced:
            raced.append(intruder.transact("mint", mint_one(elsewhere, anvil.accounts[7].address)))
        return count

    monkeypatch.setattr(admin.web3.eth, "get_transaction_count", racing_count)
    with pytest.raises(NonceClashError) as clash:
        sender.transact("mint", mint_one(admin, anvil.accounts[6].address))
    assert clash.value.account == admin.address and clash.value.chain_nonce == clash.value.nonce + 1
    assert sender.nonces.outstanding == {}
    before = nonce_of(admin)
    sender.transact("mint", mint_one(admin, anvil.accounts[6].address))
    assert nonce_of(admin) == before + 1
