"""Settlement: what a closed round pays and slashes, written down before anything is sent.

**Payout** is `protocol/rules/payout.py`'s rule (per verified prompt, times the contribution's score); in a
generation round its generation rule (per accepted trace, `reward_per_trace`), and only the accepted
traces (`protocol/rules/generation.py`: accuracy 1 and format 1) go under the round's traces root.
Rejected contributions earn nothing; each slashable one (`protocol.rules.slashing.UNSLASHABLE_REASONS` excepted)
costs its node `slash_amount`, capped at its stake, with the verdict's reason code and evidence hash.

**Details** (`protocol/chain/round_details.py`) go on chain with the settlement: the round's kind, its base
model (adapter rounds), its pay rate, and its contribution values summarised per strategy (the
objective each valued contribution declared and was verified under). They are fixed in the intent,
so a retry sends the same settlement hash.

**Crash safety** (the chain is the source of truth). Per round, in this order:

1. the `SettlementIntent` (awards, stats, traces root, slashes, the accepted hashes for the
   replay sets, the round's model hash) is written atomically to `<data_dir>/settlement/round-NNNNNN.json`
   (`protocol/runtime/atomic_files.py`: temporary file fsynced, renamed, then the directory fsynced
   so the rename itself survives a crash);
2. the checkpoint commits the round (next round = r + 1);
3. the settlement queue (`settlement_queue.py`) sends it behind the round loop, in round order:
   `settle_round` (idempotent: a retry with the same payload is a no-op, a different payload is
   refused by the contract; in parts when the awards do not fit a block), then each slash unless
   `isSlashed` already says so; any chain error is retried with backoff while rounds go on;
4. the intent is marked done.
On restart, intents of rounds the checkpoint has not committed were never sent and are dropped
(the round re-runs); every committed intent not marked done goes back in the queue (`recover`
never talks to the chain, so a chain that is down or refusing cannot stop a restart). So a
payout is never lost (the intent is durable before the round counts as done) and never doubled
(the contract settles a round once and slashes a node once per round).

**Crash points.** A `step_hook(point, round_id)` given to `RoundSettler` is called at each point of
`SETTLEMENT_STEPS`, in the order above: `after-intent` (step 1 done), `before-settle` (step 2 done,
nothing sent), `after-settle` (`settle_round` sent, no slash yet; on the queue's worker thread). Tests
and the devnet plug a crash in there (devnet/crashing_coordinator.py); the coordinator passes none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from thinkmesh.coordinator.settlement.chain_connection import (  # noqa: F401 (connect_chain, read_registry: re-exported)
    ChainConnection,
    connect_chain,
    read_registry,
)
from thinkmesh.coordinator.settlement.retry_queue import SettlementQueue
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.chain.ledger import Award, RoundStats, RoundStatus, seed_commitment
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.rules.generation import ROUND_KIND_GENERATION, ROUND_KIND_TRAINING
from thinkmesh.protocol.rules.payout import (
    SCORE_SCALE,
    contribution_score,
    generation_payout,
    payout_for,
    verified_prompts,
)
from thinkmesh.protocol.rules.rewards import total_reward
from thinkmesh.protocol.rules.traces import contribution_traces, traces_tree
from thinkmesh.protocol.runtime.atomic_files import fsync_directory, write_atomic
from thinkmesh.protocol.chain.round_details import ZERO_HASH, RoundDetails, strategy_values

logger = logging.getLogger(__name__)
SETTLEMENT_STEPS = ("after-intent", "before-settle", "after-settle")  # where a step hook is called (docstring)
StepHook = Callable[[str, int], None]  # (point, round_id); tests and the devnet only


class SettlementError(ProtocolError):
    """A round whose on-chain state contradicts the coordinator's (another seed, another model)."""


# ---- the rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptedEntry:
    """An accepted contribution as the intent keeps it: who, where paid, and its replay hashes."""

    node_key: bytes
    address: str | None
    samples: int
    sample_hashes: tuple[bytes, ...]
    gradient_digest: bytes


@dataclass(frozen=True)
class SlashIntent:
    node_key: bytes
    node: str
    amount: int  # the most to slash; capped at the stake when sent
    reason: int
    evidence_hash: bytes


@dataclass(frozen=True)
class SettlementIntent:
    """Everything one round's settlement sends, fixed before the round is committed."""

    round_id: int
    seed: bytes
    traces_root: bytes
    stats: RoundStats
    awards: tuple[Award, ...]
    slashes: tuple[SlashIntent, ...]
    accepted: tuple[AcceptedEntry, ...]
    done: bool = False
    model_hash: bytes | None = None  # the model the round trained from: lets a settle open its round on chain
    kind: str = ROUND_KIND_TRAINING  # protocol/rules/generation.py: a generation round pays and publishes accepted traces
    details: RoundDetails | None = None  # None: an intent journaled before details existed, settled without them

    @property
    def generation(self) -> bool:
        return self.kind == ROUND_KIND_GENERATION

    def to_json(self) -> str:
        return json.dumps({
            "round_id": self.round_id, "seed": self.seed.hex(), "traces_root": self.traces_root.hex(),
            "stats": [self.stats.accepted, self.stats.rejected, self.stats.mean_reward, self.stats.held_out_accuracy],
            "awards": [[a.node, a.verified_samples, a.score, str(a.payout)] for a in self.awards],
            "slashes": [[s.node_key.hex(), s.node, str(s.amount), s.reason, s.evidence_hash.hex()] for s in self.slashes],
            "accepted": [[e.node_key.hex(), e.address, e.samples, [h.hex() for h in e.sample_hashes], e.gradient_digest.hex()]
                         for e in self.accepted],
            "done": self.done, "model_hash": None if self.model_hash is None else self.model_hash.hex(),
            "kind": self.kind, "details": None if self.details is None else self.details.to_json(),
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SettlementIntent:
        try:
            raw = json.loads(text)
            return cls(
                round_id=int(raw["round_id"]), seed=bytes.fromhex(raw["seed"]), traces_root=bytes.fromhex(raw["traces_root"]),
                stats=RoundStats(*raw["stats"]),
                awards=tuple(Award(n, s, c, int(p)) for n, s, c, p in raw["awards"]),
                slashes=tuple(SlashIntent(bytes.fromhex(k), n, int(a), r, bytes.fromhex(e)) for k, n, a, r, e in raw["slashes"]),
                accepted=tuple(AcceptedEntry(bytes.fromhex(k), a, n, tuple(bytes.fromhex(h) for h in hs), bytes.fromhex(g))
                               for k, a, n, hs, g in raw["accepted"]),
                done=bool(raw["done"]),
                model_hash=bytes.fromhex(raw["model_hash"]) if raw.get("model_hash") else None,
                kind=str(raw.get("kind", ROUND_KIND_TRAINING)),
                details=RoundDetails.from_json(raw["details"]) if raw.get("details") else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SettlementError(f"expected a settlement intent JSON, got an unreadable one: {exc}") from exc


def build_intent(
    round_id: int, seed: bytes, accepted: Sequence, rejected: Sequence, held_out_accuracy: float, *,
    reward_per_prompt: int, slash_amount: int, model_hash: bytes | None = None,
    kind: str = ROUND_KIND_TRAINING, reward_per_trace: int = 0, base_model_hash: bytes | None = None,
    values: Sequence[tuple[str, float]] = (),
) -> SettlementIntent:
    """The intent of a closed round. `accepted` / `rejected` are `VerifiedContribution`s. A generation
    round (`kind`) publishes and pays its accepted traces only: `verifiedSamples` is the node's
    accepted traces, its score `SCORE_SCALE`, its payout `reward_per_trace` each. `values` are the
    round's (strategy, contribution value) pairs; `base_model_hash` the adapter round's base."""
    generation = kind == ROUND_KIND_GENERATION
    details = RoundDetails(kind=kind, base_model_hash=base_model_hash or ZERO_HASH,
                           reward_rate=reward_per_trace if generation else reward_per_prompt,
                           values=strategy_values(values))
    contributions = [item.contribution for item in accepted]
    tree = traces_tree(leaf for c in contributions for leaf in contribution_traces(c, generation))
    totals = [total_reward(s.rewards) for c in contributions for s in c.samples]
    stats = RoundStats.of(len(accepted), len(rejected), sum(totals) / len(totals) if totals else 0.0,
                          min(max(held_out_accuracy, 0.0), 1.0))
    awards = []
    for item in accepted:
        if item.address is None:
            continue
        if generation:
            traces, payout = generation_payout(item.contribution, reward_per_trace)
            awards.append(Award(item.address, traces, SCORE_SCALE, payout))
        else:
            samples, score = len(item.contribution.samples), contribution_score(item.contribution)
            payout = payout_for(verified_prompts(item.contribution), score, reward_per_prompt)
            awards.append(Award(item.address, samples, score, payout))
    slashes = tuple(
        SlashIntent(item.contribution.node_key, item.address, slash_amount,
                    int(SlashReason.from_verdict_reason(item.report.reason)), item.evidence_hash)
        for item in rejected if item.slashable
    )
    entries = tuple(
        AcceptedEntry(item.contribution.node_key, item.address, len(item.contribution.samples),
                      item.report.sample_hashes, item.report.gradient_digest)
        for item in accepted
    )
    return SettlementIntent(round_id, seed, tree.root, stats, tuple(awards), slashes, entries, model_hash=model_hash,
                            kind=kind, details=details)


# ---- the journal ----------------------------------------------------------------------------


class SettlementJournal:
    """The intents on disk, one JSON file per round, each replaced atomically and durably."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, round_id: int) -> Path:
        return self.directory / f"round-{round_id:06d}.json"

    def write(self, intent: SettlementIntent) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_directory(self.directory.parent)
        write_atomic(self.path(intent.round_id), intent.to_json())

    def mark_done(self, intent: SettlementIntent) -> SettlementIntent:
        done = replace(intent, done=True)
        self.write(done)
        return done

    def load(self) -> list[SettlementIntent]:
        if not self.directory.is_dir():
            return []
        return sorted((SettlementIntent.from_json(p.read_text()) for p in self.directory.glob("round-*.json")),
                      key=lambda intent: intent.round_id)

    def discard_uncommitted(self, next_round: int) -> list[int]:
        """Drops intents of rounds >= `next_round` (never sent: the round re-runs); returns their ids."""
        dropped = [i.round_id for i in self.load() if i.round_id >= next_round]
        for round_id in dropped:
            self.path(round_id).unlink()
        if dropped:
            fsync_directory(self.directory)
        return dropped


# ---- talking to the chain -------------------------------------------------------------------


def ensure_round_open(client, round_id: int, model_hash: bytes, seed: bytes) -> bool:
    """Opens the round unless the chain already has it open with this model and seed; True if sent."""
    record = client.round(round_id)
    if record.status == RoundStatus.NONE:
        client.open_round(round_id, model_hash, seed_commitment(seed))
        return True
    if record.seed_commitment != seed_commitment(seed) or record.model_hash != model_hash:
        raise SettlementError(
            f"round {round_id} is {record.status.name.lower()} on chain for model 0x{record.model_hash.hex()[:16]} and "
            f"another seed commitment; expected model 0x{model_hash.hex()[:16]} (a data_dir of another run?)"
        )
    if record.status == RoundStatus.SETTLED:
        raise SettlementError(f"round {round_id} is already settled on chain, but the checkpoint has not committed it")
    return False


def open_for_settlement(client, intent: SettlementIntent) -> None:
    """Opens the intent's round if the chain has never seen it (its opening never got through)."""
    if intent.model_hash is not None and client.round(intent.round_id).status == RoundStatus.NONE:
        client.open_round(intent.round_id, intent.model_hash, seed_commitment(intent.seed))


@dataclass
class SettlementOutcome:
    round_id: int
    settle_tx: bytes | None  # None: it was settled already (a retry)
    slashed: list[tuple[str, int]] = field(default_factory=list)  # (node, amount) sent now
    skipped: list[str] = field(default_factory=list)  # slashed already, or nothing left to slash


def send_settlement(client, intent: SettlementIntent, step_hook: StepHook | None = None) -> SettlementOutcome:
    """Step 3 of the module docstring; safe to repeat any number of times."""
    settled = client.settle_round(intent.round_id, intent.seed, intent.traces_root, intent.awards, intent.stats,
                                  intent.details)
    outcome = SettlementOutcome(intent.round_id, settled.tx.tx_hash if settled.tx else None)
    if step_hook is not None:
        step_hook("after-settle", intent.round_id)
    for slash in intent.slashes:
        if client.is_slashed(intent.round_id, slash.node):
            outcome.skipped.append(slash.node)
            continue
        amount = min(slash.amount, client.node(slash.node).stake)
        if amount == 0:
            outcome.skipped.append(slash.node)
            continue
        client.slash(intent.round_id, slash.node, amount, slash.reason, slash.evidence_hash)
        outcome.slashed.append((slash.node, amount))
    return outcome


def settle_pending(client, journal: SettlementJournal, intents: Iterable[SettlementIntent],
                   step_hook: StepHook | None = None) -> list[SettlementOutcome]:
    """Sends every intent not marked done and marks it done (what the settlement queue runs per round)."""
    outcomes = []
    for intent in intents:
        if intent.done:
            continue
        outcome = send_settlement(client, intent, step_hook)
        journal.mark_done(intent)
        logger.info("round %d settled on chain (%s), %d slashed", intent.round_id,
                    "retry, already settled" if outcome.settle_tx is None else "0x" + outcome.settle_tx.hex()[:16],
                    len(outcome.slashed), extra={"event": "settlement", "round": intent.round_id})
        outcomes.append(outcome)
    return outcomes


class RoundSettler:
    """The coordinator's settlement side: the journal, and (with a chain) the settlement queue.

    Without a chain client it still journals every round (the replay sets survive restarts) and pays
    nothing. With one, nothing here blocks on the chain: openings and settlements go to a
    `SettlementQueue` whose worker `start()` starts and `shutdown()` stops. `step_hook`: tests and
    the devnet only (the module docstring's crash points).
    """

    def __init__(self, journal: SettlementJournal, client=None, *, reward_per_prompt: int = 0, slash_amount: int = 0,
                 queue: SettlementQueue | None = None, step_hook: StepHook | None = None, reward_per_trace: int = 0):
        self.journal = journal
        self.client = client
        self.step_hook = step_hook
        self.reward_per_prompt = reward_per_prompt
        self.reward_per_trace = reward_per_trace
        self.slash_amount = slash_amount
        own = client.copy() if client is not None and hasattr(client, "copy") else client
        self.queue = queue or (SettlementQueue(own, journal, step_hook=step_hook) if client is not None else None)
        self._model_hashes: dict[int, bytes] = {}
        self._kinds: dict[int, str] = {}
        self._base_hashes: dict[int, bytes] = {}

    def recover(self, next_round: int) -> list[SettlementIntent]:
        """Drops uncommitted intents and queues the committed ones not done (no chain call, so nothing
        the chain does can stop a restart); returns the committed intents."""
        dropped = self.journal.discard_uncommitted(next_round)
        if dropped:
            logger.info("dropped the uncommitted settlement intents of rounds %s (they re-run)", dropped)
        intents = self.journal.load()
        pending = [i for i in intents if not i.done]
        if self.queue is not None:
            for intent in pending:
                self.queue.settle(intent)
            if pending:
                logger.info("queued the settlements of rounds %s, committed before the restart",
                            [i.round_id for i in pending])
        return intents

    def start(self) -> None:
        if self.queue is not None:
            self.queue.start()

    def shutdown(self) -> None:
        if self.queue is not None:
            self.queue.shutdown()

    def backlog(self) -> dict | None:
        return self.queue.backlog() if self.queue is not None else None

    def open_round(self, round_id: int, model_hash: bytes, seed: bytes, kind: str = ROUND_KIND_TRAINING,
                   base_hash: bytes | None = None) -> None:
        """Queues the round's opening on chain (`kind`: the round's, `protocol/rules/generation.py`; `base_hash`:
        an adapter round's frozen base, published at settlement); returns at once."""
        self._model_hashes[round_id] = model_hash
        self._kinds[round_id] = kind
        if base_hash is not None:
            self._base_hashes[round_id] = base_hash
        if self.queue is not None:
            self.queue.open_round(round_id, model_hash, seed, kind)

    def record(self, round_id: int, seed: bytes, accepted: Sequence, rejected: Sequence,
               held_out_accuracy: float, values: Sequence[tuple[str, float]] = ()) -> SettlementIntent:
        """Steps 1 of the module docstring: the intent, durable before the checkpoint commits.
        `values`: the round's (strategy, contribution value) pairs, published per strategy."""
        intent = build_intent(round_id, seed, accepted, rejected, held_out_accuracy,
                              reward_per_prompt=self.reward_per_prompt, slash_amount=self.slash_amount,
                              model_hash=self._model_hashes.pop(round_id, None),
                              kind=self._kinds.pop(round_id, ROUND_KIND_TRAINING), reward_per_trace=self.reward_per_trace,
                              base_model_hash=self._base_hashes.pop(round_id, None), values=values)
        self.journal.write(intent)
        self._reached("after-intent", round_id)
        return intent

    def _reached(self, point: str, round_id: int) -> None:
        if self.step_hook is not None:
            self.step_hook(point, round_id)

    def send(self, intent: SettlementIntent) -> None:
        """Step 3: queues the settlement of a committed round; returns at once."""
        self._reached("before-settle", intent.round_id)
        if self.queue is not None:
            self.queue.settle(intent)
        else:
            self.journal.mark_done(intent)
