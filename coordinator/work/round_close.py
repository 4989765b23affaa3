"""When a round may close before its deadline: once every node expected in it has arrived.

Closing early saves the time the fast nodes would wait, and must cost no honest node its work:
a node cut off by an early close is refused as `late` and paid nothing. So a fixed count
("close after N contributions") is not a rule: with one node more than N, one node's work is
thrown away every round. The rule is instead:

- **expected** in round r: the peers that may contribute (registered, or admitted by
  `allowed_nodes`) and either
  - uploaded for round r - `ACTIVE_ROUNDS` or later, with any outcome (a late upload shows a
    node still working: it is expected again and no longer cut off), connected now or not (a
    node busy with its rollouts reconnects only to upload, after its p2pd or the coordinator's
    was restarted), or
  - are connected now, and connected since round r-1 opened (a node that joined, or came back,
    lately);
- **arrived**: the peers with a verdict in round r (accepted or rejected) or whose upload for
  round r ended otherwise (refused: it will not send another);
- the round closes early when every expected peer has arrived and at least `close_when`
  verdicts are in (`close_when` = 0: never early), else at its deadline.

A node that stops (dies, leaves, goes quiet) costs at most `ACTIVE_ROUNDS` rounds that run to
their deadline, the price of never cutting off one that is merely slow or reconnecting. Everything
here is pure: the coordinator feeds it the peers it sees (`list_peers`), the uploads its stream
handler saw, the verdicts intake recorded, and which peers may contribute.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

ACTIVE_ROUNDS = 2  # an upload for any of the last two rounds keeps a node expected
UPLOAD_LOG_PEERS = 4096  # peers remembered by `UploadLog`, the most recently seen


class UploadLog:
    """Per peer, the round its latest upload claimed (the header's round id: the PeerID is the
    stream's, authenticated by libp2p; the round is the peer's own claim, which can only make it
    expected, never anyone else). Bounded: the least recently seen peers are forgotten."""

    def __init__(self, limit: int = UPLOAD_LOG_PEERS):
        self.limit = limit
        self._latest: OrderedDict[str, int] = OrderedDict()

    def ended(self, peer_id: str, round_id: int) -> None:
        """An upload from `peer_id` for `round_id` ended (a receipt was sent, or the stream broke)."""
        self._latest.pop(peer_id, None)
        self._latest[peer_id] = round_id
        while len(self._latest) > self.limit:
            self._latest.popitem(last=False)

    def latest(self) -> Mapping[str, int]:
        return self._latest

    def ended_for(self, round_id: int) -> frozenset[str]:
        return frozenset(peer for peer, claimed in self._latest.items() if claimed == round_id)


def expected_nodes(round_id: int, connected: Iterable[str], first_seen: Mapping[str, float],
                   previous_opened_at: float | None, latest_upload: Mapping[str, int],
                   may_contribute: Callable[[str], bool] = lambda peer: True) -> frozenset[str]:
    """The peers expected in `round_id` (see the module docstring). `connected`: the peers that
    may contribute connected now; `first_seen`: when each was first seen connected;
    `previous_opened_at`: when round r-1 opened, on the same clock (None: no earlier round in this
    process, so every connected peer counts as new); `latest_upload`: the round each peer's
    latest upload claimed, filtered through `may_contribute`."""
    recent = {peer for peer, claimed in latest_upload.items() if claimed >= round_id - ACTIVE_ROUNDS}
    new = {peer for peer in connected
           if previous_opened_at is None or first_seen.get(peer, float("-inf")) >= previous_opened_at}
    return frozenset(peer for peer in recent if may_contribute(peer)) | frozenset(new)


def may_close_early(expected: frozenset[str], arrived: frozenset[str], verdicts: int, close_when: int) -> bool:
    """True when every expected peer arrived and at least `close_when` (> 0) verdicts are in."""
    return close_when > 0 and verdicts >= close_when and expected <= arrived


@dataclass
class Attendance:
    """What the coordinator saw of its peers over time: when each connected peer was first seen
    (forgotten once it disconnects, so a node that comes back counts as new) and when each round
    opened. Times are `time.monotonic()` seconds."""

    first_seen: dict[str, float] = field(default_factory=dict)
    opened_at: dict[int, float] = field(default_factory=dict)

    def observe(self, connected: Iterable[str], now: float) -> frozenset[str]:
        """Records the peers connected now; returns them."""
        connected = frozenset(connected)
        for peer in list(self.first_seen):
            if peer not in connected:
                del self.first_seen[peer]
        for peer in connected:
            self.first_seen.setdefault(peer, now)
        return connected

    def round_opened(self, round_id: int, now: float) -> None:
        self.opened_at[round_id] = now
        for old in [r for r in self.opened_at if r < round_id - 1]:
            del self.opened_at[old]

    def expected(self, round_id: int, connected: frozenset[str], uploads: UploadLog,
                 may_contribute: Callable[[str], bool] = lambda peer: True) -> frozenset[str]:
        return expected_nodes(round_id, connected, self.first_seen, self.opened_at.get(round_id - 1),
                              uploads.latest(), may_contribute)
