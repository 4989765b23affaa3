"""The devnet's model and round sizes: `tiny` for a person watching, `micro` for tests and quick looks.

Both are sized for a CPU laptop. `tiny` (about 1.6M parameters, the default) is cold-started on
24,000 generated chains of thought from a teacher that stops one step short in half of them
(node/local/coldstart.py), so the network has something to learn that shows within minutes: the
dashboard's held-out accuracy (problems no stage trains on: `tasks.is_heldout`) climbs as the
mesh's GRPO updates teach the model to finish its reasoning (docs/learning.md). `micro` (about
50k parameters) trades that for a round of a few seconds and a cold start well under a minute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from thinkmesh.devnet.model_cache import ModelRecipe
from thinkmesh.devnet.processes import DevnetError
from thinkmesh.node.local.coldstart import ColdStartSettings
from thinkmesh.node.model.tiny_model import TinyModelSpec

STRATEGY_CYCLE = ("grpo", "dapo", "gspo", "dr_grpo", "rloo")


@dataclass(frozen=True)
class DevnetProfile:
    """A model recipe and the round sizes that suit it (seconds, counts)."""

    recipe: ModelRecipe
    deadline_s: float
    prompts_per_node: int
    group_size: int
    max_new_tokens: int
    eval_prompts: int
    eval_max_new_tokens: int
    task_family: str = "arithmetic"
    lr: float = 1e-3  # the coordinator's AdamW step on the aggregated gradient
    adapter_rank: int = 0  # > 0: adapter rounds, a LoRA of this rank on every linear layer (protocol/rules/adapters.py)

    def with_adapter(self, rank: int | None) -> DevnetProfile:
        """Adapter rounds at LoRA rank `rank` (None: unchanged). The step size is 10x the full
        model's: LoRA's best learning rate sits about an order of magnitude above full fine-tuning's
        (Schulman et al. 2025, "LoRA Without Regret"); not tuned on the devnet's models."""
        if rank is None:
            return self
        if not 1 <= rank <= 1024:
            raise DevnetError(f"--adapter: expected a LoRA rank in 1..1024, got {rank}")
        return dataclasses.replace(self, adapter_rank=rank, lr=self.lr * 10)

    def with_coldstart_examples(self, examples: int | None) -> DevnetProfile:
        if examples is None:
            return self
        if examples < 1:
            raise DevnetError(f"--coldstart-examples: expected at least 1, got {examples}")
        coldstart = dataclasses.replace(self.recipe.coldstart, num_examples=examples)
        return dataclasses.replace(self, recipe=dataclasses.replace(self.recipe, coldstart=coldstart))


PROFILES = {
    "tiny": DevnetProfile(
        # 0% held-out greedy on the devnet's 32 eval problems after the cold start (6% on 128; it
        # mostly stops short). In `train local` with four nodes' worth of the devnet's batch
        # (16 prompts x 4, grpo, lr 3e-4) this rises to 0.31 by step 6 and holds 0.22-0.34 to
        # step 20 (2026-12-07, docs/learning.md; 55-60% before the held-out partition of issue 17).
        recipe=ModelRecipe("tiny", TinyModelSpec(), ColdStartSettings(
            families=("linear",), num_examples=24000, teacher_slip_rate=0.5)),
        deadline_s=90.0, prompts_per_node=4, group_size=4, max_new_tokens=48, eval_prompts=32, eval_max_new_tokens=48,
        task_family="linear", lr=3e-4,
    ),
    "micro": DevnetProfile(
        recipe=ModelRecipe(
            "micro",
            TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),
            ColdStartSettings(families=("linear",), num_examples=1024, epochs=2, batch_size=16, lr=1e-2),
        ),
        deadline_s=45.0, prompts_per_node=2, group_size=4, max_new_tokens=16, eval_prompts=4, eval_max_new_tokens=16,
        task_family="linear",
    ),
}


def profile_named(name: str) -> DevnetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise DevnetError(f"--model: expected one of {', '.join(PROFILES)}, got {name!r}") from None


def strategy_for(index: int) -> str:
    """Node `index` (0-based) runs the `index`-th strategy of the cycle: different strategies side by side."""
    return STRATEGY_CYCLE[index % len(STRATEGY_CYCLE)]
