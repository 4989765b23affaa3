"""What thinkmesh keeps in the hivemind DHT, and the validator that guards it.

One key per run, `announcement_key(run_id)`, holds the current `RoundAnnouncement` as its
canonical message bytes (a regular value, no subkeys). Its expiration is tied to the round's
deadline, so the DHT's "latest expiration wins" rule picks the newest round.

`AnnouncementValidator` is a hivemind `RecordValidatorBase`. Every peer that runs it refuses, at
the DHT layer, to store or return a record under that key unless the record is the canonical
encoding of a `RoundAnnouncement` for this chain and run, carrying the configured coordinator
key and that key's valid signature, with an expiration no later than its deadline plus
`ANNOUNCEMENT_GRACE_S`. A forged record therefore never enters an honest peer's storage and is
dropped from any answer an honest peer receives. Records under other keys pass untouched (the
validator guards only what it names). Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer

from thinkmesh.protocol.rules.encoding import decode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import RoundAnnouncement, verify_message

ANNOUNCEMENT_KEY_PREFIX = "thinkmesh/v1/announcement/"
ANNOUNCEMENT_GRACE_S = 120.0
_REGULAR_VALUE_SUBKEY = MSGPackSerializer.dumps(None)


def announcement_key(run_id: str) -> str:
    return ANNOUNCEMENT_KEY_PREFIX + run_id


def announcement_expiration(announcement: RoundAnnouncement) -> float:
    """The DHT expiration (unix seconds) a coordinator gives an announcement: the latest allowed."""
    return announcement.deadline_ms / 1000.0 + ANNOUNCEMENT_GRACE_S


@dataclasses.dataclass(frozen=True)
class RecordCheck:
    """Why a record was refused, for logs and tests (`ok` when it was accepted)."""

    ok: bool
    reason: str


class CheckingValidator(RecordValidatorBase):
    """A validator whose rule is `check`: a refusal is kept in `last_refusal` (in whichever
    process validated last) so logs and tests can say why a record was dropped."""

    last_refusal: RecordCheck | None = None

    def check(self, record: DHTRecord) -> RecordCheck:
        raise NotImplementedError

    def validate(self, record: DHTRecord) -> bool:
        result = self.check(record)
        if not result.ok:
            self.last_refusal = result
        return result.ok

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False


def check_announcement_bytes(
    data: bytes, *, chain_id: int, run_id: str, coordinator_key: bytes
) -> RoundAnnouncement:
    """The announcement in `data`, or ProtocolError naming the rule it breaks."""
    announcement = decode_message(data, RoundAnnouncement)
    if announcement.chain_id != chain_id or announcement.run_id != run_id:
        raise ProtocolError(
            f"announcement for chain {announcement.chain_id} run {announcement.run_id!r}, "
            f"expected chain {chain_id} run {run_id!r}"
        )
    if announcement.coordinator_key != coordinator_key:
        raise ProtocolError(
            f"announcement names coordinator 0x{announcement.coordinator_key.hex()}, "
            f"expected 0x{coordinator_key.hex()}"
        )
    verify_message(announcement, coordinator_key)
    return announcement


class AnnouncementValidator(CheckingValidator):
    """Refuses round-announcement records not signed by the configured coordinator key."""

    def __init__(self, *, chain_id: int, run_id: str, coordinator_key: bytes):
        if len(coordinator_key) != 32:
            raise ProtocolError(f"coordinator_key: expected 32 bytes, got {len(coordinator_key)}")
        self.chain_id = chain_id
        self.run_id = run_id
        self.coordinator_key = bytes(coordinator_key)
        self.key_id = DHTID.generate(source=announcement_key(run_id)).to_bytes()

    def check(self, record: DHTRecord) -> RecordCheck:
        if record.key != self.key_id:
            return RecordCheck(True, "not an announcement key")
        if record.subkey != _REGULAR_VALUE_SUBKEY:
            return RecordCheck(False, "announcements are regular values, got a subkey")
        try:
            data = MSGPackSerializer.loads(record.value)
        except Exception as exc:  # msgpack raises several types on garbage
            return RecordCheck(False, f"value is not msgpack: {type(exc).__name__}")
        if not isinstance(data, bytes):
            return RecordCheck(False, f"value: expected bytes, got {type(data).__name__}")
        try:
            announcement = check_announcement_bytes(
                data, chain_id=self.chain_id, run_id=self.run_id, coordinator_key=self.coordinator_key
            )
        except ProtocolError as exc:
            return RecordCheck(False, str(exc))
        if record.expiration_time > announcement_expiration(announcement) + 1e-3:
            return RecordCheck(False, "expiration later than the announcement's deadline allows")
        return RecordCheck(True, "ok")
