"""Live progress of a running devnet: the coordinator's `/status` and the ledger's settlements.

`RoundWatcher.poll()` is called about once a second by `devnet up`; it returns the lines that are
new since the last call (a round opened, closed, settled on chain) and keeps the counts that
decide when `--rounds R` is done. It never raises on a coordinator that is still starting (no
status yet) or briefly busy: a missing answer is "nothing new".
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field

from thinkmesh.devnet.summary import format_tokens

STATUS_TIMEOUT_S = 2.0


def fetch_json(url: str, timeout_s: float = STATUS_TIMEOUT_S) -> dict | None:
    """A JSON GET, or None when nothing (valid) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@dataclass
class RoundWatcher:
    """Tracks rounds after `first_round - 1` (rounds an earlier `up` ran are not this run's).

    `ledger` is a read-only `LedgerClient` when the coordinator settles on chain, else None. With a
    ledger a round counts as done once `RoundSettled` is on chain and the coordinator has moved past
    the round (so its slashes, sent after the settlement, are on chain too); without one, once the
    coordinator closes it.
    """

    status_url: str
    first_round: int
    ledger: object | None = None
    closed: dict[int, dict] = field(default_factory=dict)
    settled: set[int] = field(default_factory=set)
    announced: set[int] = field(default_factory=set)
    last_status: dict | None = None

    def poll(self) -> list[str]:
        lines: list[str] = []
        status = fetch_json(self.status_url)
        if status is not None:
            self.last_status = status
            lines += self._round_lines(status)
        if self.ledger is not None:
            lines += self._settlement_lines()
        return lines

    def done_rounds(self) -> int:
        """Rounds of this run that count as done (settled on chain when there is a ledger)."""
        return len(self.settled) if self.ledger is not None else len(self.closed)

    def coordinator_finished(self) -> bool:
        return bool(self.last_status and self.last_status.get("phase") == "done")

    def _moved_past(self, round_id: int) -> bool:
        """True once the coordinator finished sending `round_id`'s settlement, every slash included: its
        settlement queue, which settles rounds in order behind the round loop, has settled through it."""
        status = self.last_status or {}
        settlement = status.get("settlement")
        if settlement is not None:
            return (settlement.get("settled_through") or 0) >= round_id
        return status.get("phase") == "done" or status.get("round_id", 0) > round_id  # a coordinator of before

    def _round_lines(self, status: dict) -> list[str]:
        lines = []
        current = status.get("open_round")
        if current and current["round_id"] >= self.first_round and current["round_id"] not in self.announced:
            self.announced.add(current["round_id"])
            left = max(0.0, current["deadline_ms"] / 1000 - time.time())
            lines.append(f"round {current['round_id']}: open on model v{status.get('model_version')}, "
                         f"deadline in {left:.0f}s")
        evals = {e.get("version"): e for e in status.get("evals", [])}
        for record in status.get("rounds", []):
            round_id = record["round_id"]
            if round_id < self.first_round or round_id in self.closed:
                continue
            self.closed[round_id] = record
            lines.append(describe_round(record, evals.get(record.get("model_version_after"))))
        return lines

    def _settlement_lines(self) -> list[str]:
        from thinkmesh.protocol.chain.errors import ChainError

        try:
            records = self.ledger.events.settlements()
            slashes = self.ledger.events.slashes()
        except ChainError:
            return []
        lines = []
        for record in records:
            if record.round_id < self.first_round or record.round_id in self.settled:
                continue
            if not self._moved_past(record.round_id):
                continue  # its slashes are sent after `RoundSettled`: wait for the coordinator to finish them
            self.settled.add(record.round_id)
            slashed = [s for s in slashes if s.round_id == record.round_id]
            lines.append(
                f"round {record.round_id}: settled on chain in block {record.block_number}: {record.node_count} "
                f"node(s) paid {format_tokens(record.total_payout)} tokens for {record.total_samples} verified "
                f"samples" + (f", {len(slashed)} slashed" if slashed else "")
            )
        return lines


def describe_round(record: dict, evaluation: dict | None) -> str:
    """One line for a closed round from the coordinator's round record."""
    contributors = record.get("contributors", [])
    refused = record.get("refusals_total", len(record.get("refusals", [])))  # the list is bounded; the count is not
    rejected = record.get("rejected", [])  # failed verification: these are the slashed ones
    strategies = ",".join(sorted({c.get("strategy", "?") for c in contributors})) or "-"
    reasons = ",".join(sorted({r.get("reason", "?") for r in rejected}))
    line = (f"round {record['round_id']}: closed by {record.get('closed_by')} after {record.get('duration_s', 0):.1f}s, "
            f"{len(contributors)} accepted ({strategies}), {len(rejected)} rejected" + (f" ({reasons})" if reasons else "")
            + f", {refused} refused, model v{record.get('model_version_before')} -> v{record.get('model_version_after')}")
    if evaluation and "accuracy" in evaluation:
        line += f", held-out accuracy {evaluation['accuracy']:.3f}"
    return line
