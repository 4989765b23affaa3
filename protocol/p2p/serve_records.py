"""Finding servers of a model through the hivemind DHT, without a directory anyone must run.

Layout: one DHT key per model, `serve_key(model_hash)`; under it one subkey per server (its
32-byte public key) whose value is the canonical bytes of its signed `ServerAnnouncement`
(`protocol/rules/receipts.py`: key, model hash, URL, expiry), stored with the announcement's expiry. A
server re-stores its record every third of its lifetime (`ServerAnnouncer`), so a server that
stops drops out of the DHT within one lifetime.

`ServerRecordValidator` guards the keys of the model hashes it is given: a peer running it neither
stores nor returns a record under such a key unless it is the canonical encoding of an
announcement for that model, filed under its own server key, signed by that key, and stored no
longer than it says. A reader (`find_servers`) checks every record again anyway (a DHT peer may
run no validator), and drops expired ones. Records under other keys pass untouched.

What a record does not prove: that the server serves the model it names. That is what receipts
are for: `ask` re-checks answers and moves to another server when one lies (node/serve/ask.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from thinkmesh.protocol.p2p.dht_records import CheckingValidator, RecordCheck
from thinkmesh.protocol.rules.encoding import decode_message, encode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.receipts import ServerAnnouncement, check_announcement, sign_announcement

logger = logging.getLogger(__name__)

SERVE_KEY_PREFIX = "thinkmesh/v1/serve/"
DEFAULT_TTL_S = 300.0
EXPIRY_SLACK_S = 1e-3


def serve_key(model_hash: bytes) -> str:
    return SERVE_KEY_PREFIX + model_hash.hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_record(data, subkey, model_hash: bytes, expiration_time: float | None, at_ms: int | None) -> ServerAnnouncement:
    """The announcement in a record's value `data` filed under `subkey`, or ProtocolError naming
    the broken rule. `at_ms`: also refuse it when expired then (None: the validator, no clock)."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"value: expected bytes, got {type(data).__name__}")
    announcement = decode_message(data, ServerAnnouncement)
    if subkey != announcement.server_key:
        raise ProtocolError("the record is filed under another server's key than the one it names")
    check_announcement(announcement, model_hash=model_hash, now_ms=-1 if at_ms is None else at_ms)
    if expiration_time is not None and expiration_time > announcement.expires_ms / 1000 + EXPIRY_SLACK_S:
        raise ProtocolError("stored for longer than the announcement's expiry")
    return announcement


class ServerRecordValidator(CheckingValidator):
    """Refuses records under the guarded models' serve keys that are not valid announcements."""

    def __init__(self, model_hashes: Iterable[bytes]):
        self.guarded = {DHTID.generate(source=serve_key(h)).to_bytes(): bytes(h) for h in model_hashes}

    def check(self, record: DHTRecord) -> RecordCheck:
        model_hash = self.guarded.get(record.key)
        if model_hash is None:
            return RecordCheck(True, "not a guarded serve key")
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            data = MSGPackSerializer.loads(record.value)
        except Exception as exc:  # msgpack raises several types on garbage
            return RecordCheck(False, f"not msgpack: {type(exc).__name__}")
        try:
            check_record(data, subkey, model_hash, record.expiration_time, None)
        except ProtocolError as exc:
            return RecordCheck(False, str(exc))
        return RecordCheck(True, "ok")


def start_dht(model_hashes: Sequence[bytes], initial_peers: Sequence[str] = (), host_maddrs: Sequence[str] = (),
              identity: NodeIdentity | None = None, client_mode: bool = False):
    """A hivemind DHT (its own process, with p2pd) guarding `model_hashes`' serve keys. Start it
    before torch spins up threads. With `identity`, its PeerID is that key's."""
    import hivemind

    options = {}
    if identity is not None:
        fd, path = tempfile.mkstemp(prefix="thinkmesh-serve-p2p-", suffix=".key")
        with os.fdopen(fd, "wb") as handle:  # mkstemp makes it 0600
            handle.write(identity.libp2p_private_key_bytes())
        options = {"identity_path": path, "check_if_identity_free": False}
    try:
        return hivemind.DHT(
            start=True, initial_peers=list(initial_peers), host_maddrs=list(host_maddrs or ["/ip4/127.0.0.1/tcp/0"]),
            client_mode=client_mode, record_validators=[ServerRecordValidator(model_hashes)], **options,
        )
    finally:
        if options:
            os.unlink(options["identity_path"])  # p2pd has read it


class ServerAnnouncer:
    """Keeps one server's signed record in the DHT: `await run()` until cancelled."""

    def __init__(self, dht, identity: NodeIdentity, model_hash: bytes, url: str, ttl_s: float = DEFAULT_TTL_S):
        self.dht, self.identity, self.model_hash, self.url, self.ttl_s = dht, identity, model_hash, url, ttl_s
        self.stored = 0

    async def announce_once(self) -> bool:
        expires_ms = now_ms() + int(self.ttl_s * 1000)
        record = sign_announcement(ServerAnnouncement(self.identity.public_key, self.model_hash, self.url, expires_ms),
                                   self.identity)
        ok = await self.dht.store(serve_key(self.model_hash), encode_message(record), expires_ms / 1000,
                                  subkey=self.identity.public_key, return_future=True)
        if ok:
            self.stored += 1
        else:
            logger.warning("the DHT did not take this server's announcement; retrying in %.0f s", self.ttl_s / 3)
        return bool(ok)

    async def run(self) -> None:
        while True:
            try:
                await self.announce_once()
            except Exception:  # a DHT hiccup must not stop the server; the next round retries
                logger.exception("announcing this server failed")
            await asyncio.sleep(self.ttl_s / 3)


async def find_servers(dht, model_hash: bytes, at_ms: int | None = None) -> list[ServerAnnouncement]:
    """Every valid, unexpired announcement of `model_hash` the DHT returns, by server key."""
    found = await dht.get(serve_key(model_hash), latest=True, return_future=True)
    if found is None or not isinstance(found.value, dict):
        return []
    servers = []
    for subkey, item in found.value.items():
        try:
            servers.append(check_record(item.value, subkey, model_hash, item.expiration_time, at_ms or now_ms()))
        except ProtocolError as exc:
            logger.info("ignoring a serve record: %s", exc)
    return sorted(servers, key=lambda s: s.server_key)


async def wait_for_servers(dht, model_hash: bytes, timeout_s: float, at_least: int = 1,
                           poll_s: float = 0.5) -> list[ServerAnnouncement]:
    """`find_servers`, polled until it returns `at_least` servers or `timeout_s` passed (then
    whatever it last found)."""
    deadline = time.monotonic() + timeout_s
    while True:
        servers = await find_servers(dht, model_hash)
        if len(servers) >= at_least or time.monotonic() >= deadline:
            return servers
        await asyncio.sleep(poll_s)
