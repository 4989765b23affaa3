"""The announcement validator refuses forged records at the DHT layer, over a real p2pd pair."""

from __future__ import annotations

import time

import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from thinkmesh.protocol.p2p.dht_records import (
    AnnouncementValidator,
    announcement_expiration,
    announcement_key,
)
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import RoundAnnouncement, encode_message, sign_message
from thinkmesh.protocol.rules.tasks import TaskSpec

CHAIN, RUN = 31337, "run-test"


def announcement(signer: NodeIdentity, claimed_key: bytes, round_id: int = 1) -> RoundAnnouncement:
    unsigned = RoundAnnouncement(
        chain_id=CHAIN, run_id=RUN, round_id=round_id, model_version=round_id - 1, model_hash=b"\x11" * 32,
        task=TaskSpec("arithmetic", 1), prompts_per_node=2, seed=b"\x22" * 32,
        deadline_ms=int(time.time() * 1000) + 60_000, coordinator_key=claimed_key,
    )
    return sign_message(unsigned, signer)


def record(message: RoundAnnouncement, expiration: float | None = None, run_id: str = RUN) -> DHTRecord:
    return DHTRecord(
        key=DHTID.generate(source=announcement_key(run_id)).to_bytes(),
        subkey=MSGPackSerializer.dumps(None),
        value=MSGPackSerializer.dumps(encode_message(message)),
        expiration_time=announcement_expiration(message) if expiration is None else expiration,
    )


@pytest.fixture(scope="module")
def keys():
    return NodeIdentity.generate(), NodeIdentity.generate()


def test_validator_accepts_only_the_coordinators_signature(keys):
    coordinator, forger = keys
    validator = AnnouncementValidator(chain_id=CHAIN, run_id=RUN, coordinator_key=coordinator.public_key)
    genuine = announcement(coordinator, coordinator.public_key)
    assert validator.check(record(genuine)).ok
    forged_claim = announcement(forger, coordinator.public_key)  # claims the coordinator, signed by forger
    assert "bad signature" in validator.check(record(forged_claim)).reason
    own_key = announcement(forger, forger.public_key)
    assert "expected 0x" + coordinator.public_key.hex() in validator.check(record(own_key)).reason


def test_validator_refuses_stretched_expiration_and_garbage(keys):
    coordinator, _ = keys
    validator = AnnouncementValidator(chain_id=CHAIN, run_id=RUN, coordinator_key=coordinator.public_key)
    genuine = announcement(coordinator, coordinator.public_key)
    stretched = record(genuine, expiration=announcement_expiration(genuine) + 3600)
    assert not validator.validate(stretched)
    assert "expiration" in validator.last_refusal.reason
    garbage = DHTRecord(record(genuine).key, MSGPackSerializer.dumps(None), MSGPackSerializer.dumps(b"xx"), 1.0)
    assert not validator.validate(garbage)
    with_subkey = DHTRecord(record(genuine).key, MSGPackSerializer.dumps("sub"), record(genuine).value, 1.0)
    assert not validator.validate(with_subkey)


def test_validator_ignores_other_keys(keys):
    coordinator, _ = keys
    validator = AnnouncementValidator(chain_id=CHAIN, run_id=RUN, coordinator_key=coordinator.public_key)
    other = DHTRecord(DHTID.generate(source="something-else").to_bytes(), MSGPackSerializer.dumps(None), b"\xc0", 1.0)
    assert validator.validate(other)


@pytest.mark.timeout(90)
def test_forged_announcement_is_not_stored_or_returned_by_an_honest_peer(keys):
    """An attacker peer without the validator stores a forged record; the honest peer neither
    accepts it into its storage nor returns it from a lookup, yet a genuine record goes through."""
    import hivemind

    coordinator, forger = keys
    validator = AnnouncementValidator(chain_id=CHAIN, run_id=RUN, coordinator_key=coordinator.public_key)
    honest = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], record_validators=[validator])
    attacker = None
    try:
        attacker = hivemind.DHT(
            start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=honest.get_visible_maddrs()
        )
        key = announcement_key(RUN)
        forged = announcement(forger, coordinator.public_key, round_id=7)
        attacker.store(key, encode_message(forged), announcement_expiration(forged))
        # The attacker keeps its own copy, proving the record really was published...
        assert attacker.get(key, latest=True).value == encode_message(forged)
        # ...but the honest peer neither stored it nor accepts it from the attacker.
        assert honest.get(key, latest=True) is None

        genuine = announcement(coordinator, coordinator.public_key, round_id=3)
        assert attacker.store(key, encode_message(genuine), announcement_expiration(genuine) - 1)
        found = honest.get(key, latest=True)
        assert found is not None and found.value == encode_message(genuine)
    finally:
        if attacker is not None:
            attacker.shutdown()
        honest.shutdown()
