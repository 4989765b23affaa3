"""A mesh in one process, from the real parts: for benches that compare per round, not per second.

Each round: the coordinator's announcement (signed, the devnet's round seed rule, the round's terms),
each node's `honest_contribution` under its own key (its prompts and sample streams are the
protocol's for that key), the gradient decoded as the intake decodes it, the coordinator's
`aggregate` and `apply_update` with its optimizer, and `protocol.rules.evaluation` for held-out figures.
What is left out is the wire, the verifier and the chain: they change who is admitted and paid,
not the update an honest network makes. Nodes run one after another on one model (a contribution
leaves the weights untouched), so a round's wall time grows with nodes while its update does not
depend on it.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkmesh.coordinator.work.aggregation import WeightedGradient, aggregate, apply_update, build_optimizer
from thinkmesh.node.work.contribution_step import honest_contribution
from thinkmesh.protocol.rules.adapters import trainable_named_parameters, trainable_shapes
from thinkmesh.protocol.rules.gradient_codec import decode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement, sign_message
from thinkmesh.protocol.rules.seeds import round_seed
from thinkmesh.protocol.rules.strategies import StrategySpec, strategy_from_name
from thinkmesh.protocol.rules.tasks import TaskSpec
from thinkmesh.protocol.rules.terms import RoundTerms, strategy_under_terms

CHAIN_ID, RUN_ID = 31337, "bench-inprocess"
def node_identity(trial: int, index: int) -> NodeIdentity:
    """Node `index` of trial `trial`: fixed keys, so n nodes of a trial include the first n-1's."""
    return NodeIdentity.from_seed(hashlib.sha256(f"bench-inprocess/{trial}/{index}".encode()).digest())


@dataclass(frozen=True)
class MeshSettings:
    """One round's shape: per node `prompts` prompts x `group` samples of at most `max_new_tokens`."""

    task: TaskSpec = TaskSpec("linear", 1)
    template: str = "r1-compact"
    prompts: int = 8
    group: int = 8
    max_new_tokens: int = 40
    lr: float = 3e-4
    rule: str = "mean"
    optimizer: str = "adamw"  # `[aggregation] optimizer`: "adamw" or "sgd" (momentum 0.9)


@dataclass
class InProcessMesh:
    """The coordinator's state (model, optimizer) and the nodes' identities and strategies."""

    model: object
    tokenizer: object
    settings: MeshSettings
    nodes: list[tuple[NodeIdentity, StrategySpec]]
    seed_text: str
    coordinator: NodeIdentity = field(default_factory=lambda: NodeIdentity.from_seed(b"\x01" * 32))
    round_id: int = 0

    def __post_init__(self) -> None:
        params = [p for _, p in trainable_named_parameters(self.model)]
        self.optimizer = build_optimizer(params, self.settings.optimizer, self.settings.lr)  # the coordinator's defaults
        self.shapes = trainable_shapes(self.model)
        # The KL reference of a beta > 0 strategy is the base, frozen (as node/work/daemon.py keeps it).
        needs_reference = any(strategy.beta > 0 for _, strategy in self.nodes)
        self.reference = copy.deepcopy(self.model).requires_grad_(False) if needs_reference else None

    @property
    def terms(self) -> RoundTerms:
        s = self.settings
        return RoundTerms((1.0,), (1.0,), (s.group,), (s.max_new_tokens,))

    def announcement(self) -> RoundAnnouncement:
        s = self.settings
        return sign_message(RoundAnnouncement(
            chain_id=CHAIN_ID, run_id=RUN_ID, round_id=self.round_id, model_version=self.round_id - 1,
            model_hash=hashlib.sha256(b"version" + self.round_id.to_bytes(8, "big")).digest(), task=s.task,
            prompts_per_node=s.prompts, seed=round_seed(self.seed_text, self.round_id),
            deadline_ms=int((time.time() + 3600) * 1000), coordinator_key=self.coordinator.public_key,
            prompt_template=s.template, terms=self.terms,
        ), self.coordinator)

    def contributions(self, announcement: RoundAnnouncement) -> list[tuple[Contribution, dict]]:
        """Every node's signed contribution and its decoded gradient, on the current weights."""
        self.model.eval()
        result = []
        for identity, strategy in self.nodes:
            reference = self.reference if strategy.beta > 0 else None
            contribution = honest_contribution(self.model, self.tokenizer, announcement, identity, strategy,
                                               reference_model=reference)
            result.append((contribution, decode_gradient(contribution.gradient, self.shapes)))
        return result

    def step(self, contributions: list[tuple[Contribution, dict]]) -> float:
        items = [WeightedGradient(g, float(len(c.samples))) for c, g in contributions]
        return apply_update(self.model, self.optimizer, aggregate(items, self.settings.rule))

    def run_round(self) -> list[tuple[Contribution, dict]]:
        self.round_id += 1
        made = self.contributions(self.announcement())
        self.step(made)
        return made


def strategy_for(name: str, settings: MeshSettings) -> StrategySpec:
    s = settings
    return strategy_under_terms(strategy_from_name(name), RoundTerms((1.0,), (1.0,), (s.group,), (s.max_new_tokens,)))


def load(model_dir: Path):
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer

    return load_model(model_dir).eval(), load_tokenizer(model_dir)
