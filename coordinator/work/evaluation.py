"""The coordinator's held-out evaluation of each model version: `protocol.rules.evaluation`, recorded.

The figure that goes on chain (`RoundMetrics.heldOutAccuracy`) and to the dashboard is
`protocol.rules.evaluation.evaluate`'s greedy accuracy, the same rule `train local`, the devnet and the
benches use: this module only adds the version it belongs to and the wall time it took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from thinkmesh.protocol.rules.evaluation import EVAL_SAMPLES, EvalResult, EvalSettings
from thinkmesh.protocol.rules.evaluation import evaluate as evaluate_heldout
from thinkmesh.protocol.rules.tasks import TaskSpec


@dataclass(frozen=True)
class VersionEval:
    """One version's evaluation as the coordinator records it (status, checkpoint, settlement)."""

    version: int
    model_hash: str  # hex
    seconds: float
    result: EvalResult

    def as_dict(self) -> dict:
        """version, model_hash, seconds, then every field of `EvalResult` (`accuracy` goes on chain)."""
        return {"version": self.version, "model_hash": self.model_hash, "seconds": self.seconds, **self.result.as_dict()}


def evaluate(model, tokenizer, spec: TaskSpec, *, prompts: int, max_new_tokens: int, seed_text: str,
             version: int, model_hash: bytes, template: str = "r1", samples: int = EVAL_SAMPLES) -> VersionEval:
    """`protocol.rules.evaluation.evaluate` of version `version` on `prompts` held-out problems."""
    started = time.perf_counter()
    settings = EvalSettings(tasks=prompts, max_new_tokens=max_new_tokens, template=template, samples=samples,
                            seed_text=seed_text)
    result = evaluate_heldout(model, tokenizer, spec, settings)
    return VersionEval(version, model_hash.hex(), round(time.perf_counter() - started, 3), result)
