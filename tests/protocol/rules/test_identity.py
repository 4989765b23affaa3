import asyncio
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkmesh.protocol.rules.errors import SignatureError
from thinkmesh.protocol.rules.identity import (
    NodeIdentity,
    SigningDomain,
    bind_identity,
    payload_hash,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify_binding,
    verify_signature,
    verify_signature_of_hash,
)

ALICE = NodeIdentity.from_seed(bytes(range(32)))
DOMAIN = SigningDomain(chain_id=31337, run_id="run-a", message_type="contribution", round_id=7)


def test_peer_id_is_the_libp2p_ed25519_form_and_round_trips():
    assert ALICE.peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(ALICE.peer_id) == ALICE.public_key
    with pytest.raises(SignatureError, match="not an Ed25519"):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # an RSA-style id


def test_signature_verifies_in_its_own_domain():
    verify_signature(ALICE.public_key, DOMAIN, b"payload", ALICE.sign(DOMAIN, b"payload"))


def test_a_signature_checks_from_the_payload_s_hash_and_its_bytes_are_pinned():
    signature = ALICE.sign(DOMAIN, b"payload")
    # The wire form: signatures made before the hash-only entry point existed still verify.
    assert signature.hex() == (
        "d9280940feb43d3900508415802dad6d906a87e20570ab1adeb9039966fcc3d4"
        "17aac4b960fd463c5a67e88a46bbce99570e96ef423e54315c45443c41e1200f"
    )
    verify_signature_of_hash(ALICE.public_key, DOMAIN, payload_hash(b"payload"), signature)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_signature_of_hash(ALICE.public_key, DOMAIN, payload_hash(b"payloaD"), signature)
    with pytest.raises(SignatureError, match="32 bytes"):
        verify_signature_of_hash(ALICE.public_key, DOMAIN, b"payload", signature)


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(DOMAIN, round_id=8),
        dataclasses.replace(DOMAIN, run_id="run-b"),
        dataclasses.replace(DOMAIN, chain_id=1),
        dataclasses.replace(DOMAIN, message_type="verdict"),
    ],
    ids=["other-round", "other-run", "other-chain", "other-type"],
)
def test_signature_does_not_replay_in_another_domain(other):
    signature = ALICE.sign(DOMAIN, b"payload")
    with pytest.raises(SignatureError, match="bad signature"):
        verify_signature(ALICE.public_key, other, b"payload", signature)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_flipped_byte_breaks_the_signature(payload, data):
    signature = ALICE.sign(DOMAIN, payload)
    target = data.draw(st.sampled_from(["payload", "signature", "key"]))
    if target == "payload":
        i = data.draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([payload[i] ^ 0xFF]) + payload[i + 1:]
        key = ALICE.public_key
    elif target == "signature":
        i = data.draw(st.integers(0, 63))
        signature = signature[:i] + bytes([signature[i] ^ 0x01]) + signature[i + 1:]
        key = ALICE.public_key
    else:
        i = data.draw(st.integers(0, 31))
        key = ALICE.public_key[:i] + bytes([ALICE.public_key[i] ^ 0x01]) + ALICE.public_key[i + 1:]
    with pytest.raises(SignatureError):
        verify_signature(key, DOMAIN, payload, signature)


def test_private_key_never_shows_in_repr():
    assert ALICE.seed().hex() not in repr(ALICE)
    assert ALICE.peer_id in repr(ALICE)


def test_evm_binding_checks_both_ways():
    evm_key = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    binding = bind_identity(ALICE, evm_key)
    verify_binding(binding)
    bob = NodeIdentity.from_seed(bytes(32))
    with pytest.raises(SignatureError):
        verify_binding(dataclasses.replace(binding, ed25519_public_key=bob.public_key))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_binding(dataclasses.replace(binding, evm_address="0x" + "11" * 20))
    other_evm = bind_identity(ALICE, bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"))
    with pytest.raises(SignatureError, match="EVM binding signature is by"):
        verify_binding(dataclasses.replace(binding, evm_signature=other_evm.evm_signature))


@pytest.mark.timeout(60)
def test_hivemind_p2pd_announces_the_same_peer_id(tmp_path):
    """The real libp2p daemon, given our identity file, must come up as our PeerID."""
    from hivemind.p2p import P2P

    identity_file = tmp_path / "p2p.key"
    identity_file.write_bytes(ALICE.libp2p_private_key_bytes())

    async def daemon_peer_id() -> str:
        p2p = await P2P.create(identity_path=str(identity_file), host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            return p2p.peer_id.to_base58()
        finally:
            await p2p.shutdown()

    assert asyncio.run(daemon_peer_id()) == ALICE.peer_id == peer_id_from_public_key(ALICE.public_key)
