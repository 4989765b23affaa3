"""When `devnet up --rounds R` counts a round as done: settled on chain *and* its slashes sent."""

from __future__ import annotations

from dataclasses import dataclass

from thinkmesh.devnet import monitor
from thinkmesh.devnet.monitor import RoundWatcher


@dataclass(frozen=True)
class Settled:
    round_id: int
    node_count: int = 2
    total_payout: int = 4 * 10**16
    total_samples: int = 8
    block_number: int = 7


class FakeEvents:
    def __init__(self):
        self.settled: list[Settled] = []

    def settlements(self):
        return list(self.settled)

    def slashes(self):
        return []


class FakeLedger:
    def __init__(self):
        self.events = FakeEvents()


def _status(phase: str, round_id: int, closed: list[int]) -> dict:
    return {"phase": phase, "round_id": round_id, "model_version": 1, "open_round": None, "evals": [],
            "rounds": [{"round_id": r, "closed_by": "all-arrived", "contributors": [], "refusals": [],
                        "model_version_before": 0, "model_version_after": 1, "duration_s": 1.0} for r in closed]}


def test_a_settled_round_counts_only_once_the_coordinator_moved_past_it(monkeypatch):
    answers = iter([_status("collecting", 3, [3 - 1]), _status("collecting", 3, [2]), _status("collecting", 4, [2, 3]),
                    _status("done", 4, [2, 3, 4])])
    monkeypatch.setattr(monitor, "fetch_json", lambda url, timeout_s=2.0: next(answers))
    ledger = FakeLedger()
    watcher = RoundWatcher("http://unused/status", first_round=3, ledger=ledger)

    assert watcher.poll() == [] and watcher.done_rounds() == 0  # round 2 belongs to an earlier `up`
    ledger.events.settled.append(Settled(3))
    assert watcher.poll() == [] and watcher.done_rounds() == 0  # settled, but round 3's slashes may still be sending
    lines = watcher.poll()
    assert any(line.startswith("round 3: closed") for line in lines)
    assert any(line.startswith("round 3: settled on chain") for line in lines) and watcher.done_rounds() == 1
    ledger.events.settled.append(Settled(4))
    assert any(line.startswith("round 4: settled") for line in watcher.poll())
    assert watcher.done_rounds() == 2 and watcher.coordinator_finished()


def test_without_a_ledger_a_closed_round_is_done(monkeypatch):
    monkeypatch.setattr(monitor, "fetch_json", lambda url, timeout_s=2.0: _status("collecting", 2, [1]))
    watcher = RoundWatcher("http://unused/status", first_round=1)
    assert watcher.poll()[0].startswith("round 1: closed by all-arrived")
    assert watcher.done_rounds() == 1
