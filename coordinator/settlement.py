"""Settlement: what a closed round pays and slashes, written down before anything is sent.

**Payout** is `protocol/payout.py`'s rule (per verified prompt, times the contribution's score).
Rejected contributions earn nothing; each slashable one (`verifier.UNSLASHABLE_REASONS` excepted)
costs its node `slash_amount`, capped at its stake, with the verdict's reason code and evidence hash.

**Crash safety** (the chain is the source of truth). Per round, in this order:

1. the `SettlementIntent` (awards, stats, traces root, slashes, the accepted hashes for the
   replay sets) is written atomically to `<data_dir>/settlement/round-NNNNNN.json`;
2. the checkpoint commits the round (next round = r + 1);
3. `settle_round` is sent (idempotent: a retry with the same payload is a no-op, a different
   payload is refused by the contract), then each slash unless `isSlashed` already says so;
4. the intent is marked done.
On restart, intents of rounds the checkpoint has not committed were never sent and are dropped
(the round re-runs); every committed intent not marked done is re-sent through step 3. So a
payout is never lost (the intent is durable before the round counts as done) and never doubled
(the contract settles a round once and slashes a node once per round).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thinkmesh.protocol.errors import ProtocolError
from thinkmesh.protocol.ledger import (
    SCORE_SCALE,
    Award,
    NodeStatus,
    RoundStats,
    RoundStatus,
    SlashReason,
    bound_nodes,
    seed_commitment,
)
from thinkmesh.protocol.messages import Contribution
from thinkmesh.protocol.payout import contribution_score, payout_for, verified_prompts
from thinkmesh.protocol.rewards import total_reward
from thinkmesh.protocol.traces import contribution_traces, traces_tree

logger = logging.getLogger(__name__)
CRASH_ENV = "THINKMESH_COORDINATOR_CRASH_AT"  # tests: "after-intent", "before-settle" or "after-settle", optionally "@ROUND"
CRASH_EXIT_CODE = 97  # when not a process-group leader; a leader dies of SIGKILL with its children


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

    def to_json(self) -> str:
        return json.dumps({
            "round_id": self.round_id, "seed": self.seed.hex(), "traces_root": self.traces_root.hex(),
            "stats": [self.stats.accepted, self.stats.rejected, self.stats.mean_reward, self.stats.held_out_accuracy],
            "awards": [[a.node, a.verified_samples, a.score, str(a.payout)] for a in self.awards],
            "slashes": [[s.node_key.hex(), s.node, str(s.amount), s.reason, s.evidence_hash.hex()] for s in self.slashes],
            "accepted": [[e.node_key.hex(), e.address, e.samples, [h.hex() for h in e.sample_hashes], e.gradient_digest.hex()]
                         for e in self.accepted],
            "done": self.done,
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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SettlementError(f"expected a settlement intent JSON, got an unreadable one: {exc}") from exc


def build_intent(
    round_id: int, seed: bytes, accepted: Sequence, rejected: Sequence, held_out_accuracy: float, *,
    reward_per_prompt: int, slash_amount: int,
) -> SettlementIntent:
    """The intent of a closed round. `accepted` / `rejected` are `VerifiedContribution`s."""
    contributions = [item.contribution for item in accepted]
    tree = traces_tree(leaf for c in contributions for leaf in contribution_traces(c))
    totals = [total_reward(s.rewards) for c in contributions for s in c.samples]
    stats = RoundStats.of(len(accepted), len(rejected), sum(totals) / len(totals) if totals else 0.0,
                          min(max(held_out_accuracy, 0.0), 1.0))
    awards = []
    for item in accepted:
        if item.address is not None:
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
    return SettlementIntent(round_id, seed, tree.root, stats, tuple(awards), slashes, entries)


# ---- the journal ----------------------------------------------------------------------------


class SettlementJournal:
    """The intents on disk, one JSON file per round, each replaced atomically."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, round_id: int) -> Path:
        return self.directory / f"round-{round_id:06d}.json"

    def write(self, intent: SettlementIntent) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(intent.round_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(intent.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

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
        return dropped


# ---- talking to the chain -------------------------------------------------------------------


@dataclass(frozen=True)
class ChainConnection:
    """The coordinator's two clients: `signer` sends (event loop's worker threads, one at a time),
    `reader` serves the verifier's registry reads; amounts in token units."""

    signer: object
    reader: object
    reward_per_prompt: int
    slash_amount: int

    def registry(self) -> dict[bytes, str]:
        return read_registry(self.reader)


def connect_chain(config, evm_private_key: bytes | None) -> ChainConnection:
    """Connects the `[chain]` section of a `CoordinatorConfig`; checks the account may settle."""
    from thinkmesh.protocol.account_lock import acquire_account_lock
    from thinkmesh.protocol.chain import LedgerClient, discover_deployment
    from thinkmesh.protocol.ledger import Deployment, checksum_address, tokens

    chain = config.chain
    if chain.deployment_file is not None:
        deployment = Deployment.load(chain.deployment_file)
        if chain.ledger and checksum_address(chain.ledger, "[chain] ledger") != deployment.ledger:
            raise SettlementError(f"[chain] ledger {chain.ledger} differs from {chain.deployment_file}'s {deployment.ledger}")
    elif chain.ledger:
        deployment = discover_deployment(chain.rpc_url, chain.ledger, from_block=chain.from_block)
    else:
        raise SettlementError("[chain]: expected deployment_file or ledger, got neither")
    if chain.private_key_env:
        key = os.environ.get(chain.private_key_env)
        if not key:
            raise SettlementError(f"[chain] private_key_env: expected ${chain.private_key_env} to hold a 0x-hex key, it is unset")
    elif evm_private_key:
        key = "0x" + evm_private_key.hex()
    else:
        raise SettlementError("[chain]: expected the coordinator's EVM key (its keystore or private_key_env), got none")
    signer = LedgerClient.connect(chain.rpc_url, deployment, private_key=key)
    acquire_account_lock(deployment.chain_id, signer.address, role="coordinator")
    if not signer.is_coordinator(signer.address):
        raise SettlementError(f"the coordinator account {signer.address} lacks COORDINATOR_ROLE on ledger {deployment.ledger}")
    return ChainConnection(signer, LedgerClient.connect(chain.rpc_url, deployment),
                           tokens(chain.reward_per_prompt), tokens(chain.slash_amount))


def crash_point(point: str, round_id: int) -> None:
    """Test hook: exits the process at `point` when THINKMESH_COORDINATOR_CRASH_AT names it."""
    wanted = os.environ.get(CRASH_ENV, "")
    name, _, at = wanted.partition("@")
    if name == point and (not at or int(at) == round_id):
        logger.warning("crash hook: killed at %s of round %d", point, round_id)
        logging.shutdown()
        if os.getpgid(0) == os.getpid():  # a session leader (as tests start it): SIGKILL the DHT and p2pd too
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(CRASH_EXIT_CODE)


def read_registry(client) -> dict[bytes, str]:
    """Ed25519 key -> address of every validly bound node whose account is Active."""
    bound = bound_nodes(client.events.registrations())
    return {key: reg.node for key, reg in bound.items() if client.node(reg.node).status == NodeStatus.ACTIVE}


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


@dataclass
class SettlementOutcome:
    round_id: int
    settle_tx: bytes | None  # None: it was settled already (a retry)
    slashed: list[tuple[str, int]] = field(default_factory=list)  # (node, amount) sent now
    skipped: list[str] = field(default_factory=list)  # slashed already, or nothing left to slash


def send_settlement(client, intent: SettlementIntent) -> SettlementOutcome:
    """Step 3 of the module docstring; safe to repeat any number of times."""
    settled = client.settle_round(intent.round_id, intent.seed, intent.traces_root, intent.awards, intent.stats)
    outcome = SettlementOutcome(intent.round_id, settled.tx.tx_hash if settled.tx else None)
    crash_point("after-settle", intent.round_id)
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


def settle_pending(client, journal: SettlementJournal, intents: Iterable[SettlementIntent]) -> list[SettlementOutcome]:
    """Sends every intent not marked done and marks it done (restart recovery and the normal path)."""
    outcomes = []
    for intent in intents:
        if intent.done:
            continue
        outcome = send_settlement(client, intent)
        journal.write(SettlementIntent(**{**intent.__dict__, "done": True}))
        logger.info("round %d settled on chain (%s), %d slashed", intent.round_id,
                    "retry, already settled" if outcome.settle_tx is None else "0x" + outcome.settle_tx.hex()[:16],
                    len(outcome.slashed), extra={"event": "settlement", "round": intent.round_id})
        outcomes.append(outcome)
    return outcomes


class RoundSettler:
    """The coordinator's settlement side: the journal, and (with a chain) the signing client.

    Without a chain client it still journals every round (the replay sets survive restarts)
    and pays nothing. Methods that talk to the chain block: call them from a worker thread.
    """

    def __init__(self, journal: SettlementJournal, client=None, *, reward_per_prompt: int = 0, slash_amount: int = 0):
        self.journal = journal
        self.client = client
        self.reward_per_prompt = reward_per_prompt
        self.slash_amount = slash_amount

    def recover(self, next_round: int) -> list[SettlementIntent]:
        """Drops uncommitted intents, re-sends committed ones not done; returns the committed intents."""
        dropped = self.journal.discard_uncommitted(next_round)
        if dropped:
            logger.info("dropped the uncommitted settlement intents of rounds %s (they re-run)", dropped)
        intents = self.journal.load()
        if self.client is not None:
            settle_pending(self.client, self.journal, intents)
        return self.journal.load()

    def open_round(self, round_id: int, model_hash: bytes, seed: bytes) -> None:
        if self.client is not None:
            ensure_round_open(self.client, round_id, model_hash, seed)

    def record(self, round_id: int, seed: bytes, accepted: Sequence, rejected: Sequence,
               held_out_accuracy: float) -> SettlementIntent:
        """Steps 1 of the module docstring: the intent, durable before the checkpoint commits."""
        intent = build_intent(round_id, seed, accepted, rejected, held_out_accuracy,
                              reward_per_prompt=self.reward_per_prompt, slash_amount=self.slash_amount)
        self.journal.write(intent)
        crash_point("after-intent", round_id)
        return intent

    def send(self, intent: SettlementIntent) -> None:
        crash_point("before-settle", intent.round_id)
        if self.client is not None:
            settle_pending(self.client, self.journal, [intent])
        else:
            self.journal.write(SettlementIntent(**{**intent.__dict__, "done": True}))
