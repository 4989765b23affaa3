"""A small verification world shared by the verification, evidence and cheat tests.

One tiny Qwen2 (in memory, seconds to build), two model versions one AdamW step apart (the
stale-model cheat samples from the older one), a coordinator, three registered nodes, and two
signed rounds. Built once per test process (`world()` is cached).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass

import torch

from thinkmesh.devnet.cheats import CheatInputs, honest_contribution
from thinkmesh.node.model.tiny_model import TinyModelSpec, qwen2_config
from thinkmesh.node.model.tokenizer import build_tokenizer, vocabulary
from thinkmesh.protocol.rules.gradient_codec import decode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement, RoundTerms, sign_message
from thinkmesh.protocol.rules.model_manifest import model_hash as manifest_model_hash
from thinkmesh.protocol.rules.strategies import strategy_from_name
from thinkmesh.protocol.rules.tasks import TaskSpec
from thinkmesh.protocol.rules.verification import VerificationContext

SPEC = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, max_positions=256)
# DAPO's length shaping (overlong_buffer = max_new_tokens - 1, applied inside strategy_loss) makes
# a group's shaped rewards differ, so advantages and gradients are non-zero for an untrained model.
STRATEGY = dataclasses.replace(strategy_from_name("grpo"), beta=0.0, group_size=4, max_new_tokens=12, overlong_buffer=11)
EOS_BOOST = 40.0  # scales the <eos> embedding so completions end at varied lengths


def make_model(seed: int = 0):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(qwen2_config(SPEC), attn_implementation="sdpa")
    with torch.no_grad():
        model.get_input_embeddings().weight[vocabulary()["<eos>"]] *= EOS_BOOST
    # save_pretrained sets this field, and the model hash covers the config: set it up front so
    # the in-memory model hashes like the directory a verifier loads.
    model.config.architectures = [type(model).__name__]
    return model.eval()


def model_hash(model) -> bytes:
    return manifest_model_hash(model)


def terms_of(strategy) -> RoundTerms:
    """Terms that fix exactly `strategy`'s sampling values."""
    return RoundTerms(temperatures=(strategy.temperature,), top_ps=(strategy.top_p,), group_sizes=(strategy.group_size,),
                      max_new_tokens=(strategy.max_new_tokens,))


def announce(
    coordinator: NodeIdentity, model, round_id: int, seed: bytes, prompts: int = 2, template: str = "r1-compact",
    terms: RoundTerms | None = None,
) -> RoundAnnouncement:
    return sign_message(RoundAnnouncement(
        chain_id=31337, run_id="verify-test", round_id=round_id, model_version=round_id, model_hash=model_hash(model),
        task=TaskSpec("arithmetic", 1), prompts_per_node=prompts, seed=seed, deadline_ms=2**41,
        coordinator_key=coordinator.public_key, prompt_template=template, terms=terms or terms_of(STRATEGY),
    ), coordinator)


def one_step_later(model, gradient: dict[str, torch.Tensor], lr: float = 1e-4):
    """The next model version: one AdamW step (the coordinator's default lr) on `gradient`."""
    newer = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(newer.parameters(), lr=lr)
    for name, param in newer.named_parameters():
        param.grad = gradient[name].clone()
    optimizer.step()
    return newer.eval()


@dataclass
class World:
    tokenizer: object
    old_model: object
    model: object
    coordinator: NodeIdentity
    nodes: tuple[NodeIdentity, ...]
    old_round: RoundAnnouncement
    round: RoundAnnouncement
    old_honest: Contribution  # nodes[0] in old_round, on old_model
    honest: tuple[Contribution, ...]  # each node in round, on model

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.model.named_parameters()}

    def context(self, **changes) -> VerificationContext:
        return dataclasses.replace(VerificationContext(frozenset(n.public_key for n in self.nodes)), **changes)

    def cheat_inputs(self, node: int = 0, **changes) -> CheatInputs:
        base = CheatInputs(
            announcement=self.round, identity=self.nodes[node], honest=self.honest[node], model=self.model,
            tokenizer=self.tokenizer, stale_model=self.old_model, peer=self.honest[(node + 1) % len(self.nodes)],
            old=self.old_honest,
        )
        return dataclasses.replace(base, **changes)


@functools.cache
def world() -> World:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    coordinator = NodeIdentity.from_seed(b"\xc0" * 32)
    nodes = tuple(NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(3))
    old_model = make_model()
    old_round = announce(coordinator, old_model, 1, b"\x11" * 32)
    old_honest = honest_contribution(old_model, tokenizer, old_round, nodes[0], STRATEGY)
    model = one_step_later(old_model, decode_gradient(old_honest.gradient, {
        name: tuple(p.shape) for name, p in old_model.named_parameters()}))
    current = announce(coordinator, model, 2, b"\x22" * 32)
    honest = tuple(honest_contribution(model, tokenizer, current, node, STRATEGY) for node in nodes)
    return World(tokenizer, old_model, model, coordinator, nodes, old_round, current, old_honest, honest)
