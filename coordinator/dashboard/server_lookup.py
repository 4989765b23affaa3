"""Which nodes serve a model version, as far as the DHT says: the dashboard's "where known".

Serving is not on chain. A `thinkmesh serve --announce` server keeps a signed record in the hivemind
DHT under its model's hash (`protocol/p2p/serve_records.py`); this lookup joins the DHT as a client (it
stores nothing and answers nobody), reads the records of the versions the chain lists, and keeps
those whose signature, model hash and expiry check. A record is the server's claim to serve those
weights, not a proof: answers are checked by their receipts (`thinkmesh verify-receipt`, `ask`).

Lifecycle: `ServerLookup.start(initial_peers)` starts the DHT (its own process, with p2pd),
`await find(model_hashes)` looks up, `shutdown()` stops it. `start_or_report` is the dashboard's,
run once its page is listening (a `JoiningLookup` answers meanwhile): a DHT that does not start
gives an `UnstartedLookup`, whose every lookup fails with the reason, so the page stays up and
says why serving nodes are unknown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)
LOOKUP_TIMEOUT_S = 10.0


class ServerLookup:
    """Serve records of model versions, read from the DHT."""

    def __init__(self, dht, initial_peers: Sequence[str]) -> None:
        self._dht = dht
        self.initial_peers = tuple(initial_peers)

    @classmethod
    def start(cls, initial_peers: Sequence[str]) -> ServerLookup:
        """Joins the DHT through `initial_peers` (client mode). Call before torch starts threads."""
        from thinkmesh.protocol.p2p.serve_records import start_dht

        if not initial_peers:
            raise ValueError("expected at least one DHT multiaddr to look servers up through, got none")
        return cls(start_dht([], initial_peers, client_mode=True), initial_peers)

    @property
    def description(self) -> str:
        return (f"signed records of thinkmesh serve found in the DHT (via {len(self.initial_peers)} peer(s)); "
                "a record is a server's claim, its answers' receipts are the proof")

    async def find(self, model_hashes: Iterable[bytes], timeout_s: float = LOOKUP_TIMEOUT_S) -> dict[bytes, list]:
        """Model hash -> its valid, unexpired `ServerAnnouncement`s; raises `TimeoutError` past `timeout_s`."""
        from thinkmesh.protocol.p2p.serve_records import find_servers

        hashes = list(dict.fromkeys(bytes(h) for h in model_hashes))
        found = await asyncio.wait_for(asyncio.gather(*(find_servers(self._dht, h) for h in hashes)), timeout_s)
        return dict(zip(hashes, found, strict=True))

    def shutdown(self) -> None:
        self._dht.shutdown()


class UnstartedLookup:
    """A lookup whose DHT did not start: each `find` raises with the reason, which the page shows."""

    description = "unknown: the DHT lookup did not start"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def find(self, model_hashes: Iterable[bytes], timeout_s: float = LOOKUP_TIMEOUT_S) -> dict[bytes, list]:
        raise RuntimeError(f"the DHT did not start: {self.reason}")

    def shutdown(self) -> None:
        pass


class JoiningLookup:
    """The lookup while the dashboard joins the DHT in the background: the page is up at once and
    says serving nodes are not known yet, rather than refusing connections for the seconds p2pd
    takes to start."""

    description = "unknown: still joining the DHT"

    async def find(self, model_hashes: Iterable[bytes], timeout_s: float = LOOKUP_TIMEOUT_S) -> dict[bytes, list]:
        raise RuntimeError("still joining the DHT")

    def shutdown(self) -> None:
        pass


def start_or_report(initial_peers: Sequence[str]) -> ServerLookup | UnstartedLookup:
    """`ServerLookup.start`, or an `UnstartedLookup` naming why it failed (logged as a warning)."""
    try:
        return ServerLookup.start(initial_peers)
    except Exception as exc:  # p2pd or hivemind failing in any way: the chain's figures still show
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.warning("dashboard: cannot join the DHT to look serving nodes up: %s", reason)
        return UnstartedLookup(reason)
