"""Serve records in the DHT: the validator's rules, without a network (the e2e test has p2pd)."""

from __future__ import annotations

import dataclasses

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from thinkmesh.protocol.p2p.serve_records import ServerRecordValidator, serve_key
from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.receipts import ServerAnnouncement, sign_announcement

MODEL = b"\x11" * 32
SERVER = NodeIdentity.from_seed(b"\x01" * 32)
OTHER = NodeIdentity.from_seed(b"\x02" * 32)


def record(announcement: ServerAnnouncement, subkey: bytes | None = None, expiration: float | None = None,
           model: bytes = MODEL) -> DHTRecord:
    return DHTRecord(
        key=DHTID.generate(source=serve_key(model)).to_bytes(),
        subkey=MSGPackSerializer.dumps(subkey if subkey is not None else announcement.server_key),
        value=MSGPackSerializer.dumps(encode_message(announcement)),
        expiration_time=announcement.expires_ms / 1000 if expiration is None else expiration,
    )


def offer(identity=SERVER, **changes) -> ServerAnnouncement:
    unsigned = ServerAnnouncement(identity.public_key, MODEL, "http://127.0.0.1:8000", 2_000_000_000_000)
    return sign_announcement(dataclasses.replace(unsigned, **changes), identity)


def test_a_signed_offer_under_its_own_key_passes():
    assert ServerRecordValidator([MODEL]).check(record(offer())).ok


def test_forged_or_misfiled_offers_are_refused_with_the_reason():
    validator = ServerRecordValidator([MODEL])
    cases = {
        "another server's key": record(offer(), subkey=OTHER.public_key),
        "bad signature": record(dataclasses.replace(offer(), url="http://evil:1")),
        "offers model": record(offer(model_hash=b"\x22" * 32)),
        "longer than": record(offer(), expiration=2_000_000_001.0),
    }
    for reason, bad in cases.items():
        result = validator.check(bad)
        assert not result.ok and reason in result.reason, (reason, result)
    garbage = dataclasses.replace(record(offer()), value=b"\xc1")
    assert not validator.check(garbage).ok


def test_records_under_other_keys_pass_untouched():
    assert ServerRecordValidator([b"\x33" * 32]).check(record(dataclasses.replace(offer(), url="http://evil:1"))).ok
