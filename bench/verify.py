"""Verification benchmark: cost of re-scoring vs producing, detection per cheat mode, false
positives, and held-out accuracy with and without a cheater.

    .venv/bin/python bench/verify.py [--honest 200] [--cheats 50] [--accuracy-rounds 4] [--accuracy-trials 4]

Setup: the default tiny Qwen2 (1.6M parameters, character tokenizer) built in memory, two model
versions one AdamW step (lr 1e-4) apart, `grpo` with beta 0, group 8, 2 prompts per node, up to
48 new tokens, honest gradients cycling through the four compression modes. Every contribution
comes from a distinct node key (so distinct prompts). One torch thread for producing and
verifying alike, so `cost_ratio` is a ratio of like for like measured in this one run.

Production is `honest_contribution` (rollouts, gradient, codec, signature: a node's whole round
of work); verification is the coordinator's whole step, `ContributionVerifier.verify` (every
check, the planned audit, the evidence file and the accepted-contribution archive). Both are
split into phases (`produce_breakdown_s`, `verify_breakdown_s`: mean seconds per contribution)
by timing the pipeline's own functions where they are looked up, so the code measured is the
code that runs. The accuracy part is `bench/verify_accuracy.py`. Prints one JSON object last.

`cost_ratio_at_policy_rates` weights each audit level's mean cost by the policy's rates and adds each
contribution's share of the round's durability barrier (`sync_round`: verdict files are fsynced once
per round, before the settlement intent names them, not on the verification path); the full
level's mean includes a full audit of every `--full-every`-th contribution, since a low
`full_gradient_rate` draws too few for a mean. `probe_weights_ab` times the policy's weighted
probe against the same with other floors (`--ab-floors`; 1 is the uniform draw over all
parameters) on the same contributions, in rotating order, at the old and the current full audit
rate. Only the measured verifier writes its evidence to disk; the shadow verifiers (the arms, the
cheap policy, the every-n-th full audit) write to a tmpfs and drop their files every 25
contributions, so that their writes neither throttle it nor grow the page cache it writes into. `partial_gradient_weight_aware` measures a cheater who knows the weights
(the window's tensors honest, the rest over half the samples) against the predicted detection.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.verification_world

import torch  # noqa: E402

import thinkmesh.coordinator.work.verifier as coordinator_verifier  # noqa: E402
import thinkmesh.node.work.contribution_step as contribution_step  # noqa: E402
import thinkmesh.protocol.rules.verification as verification  # noqa: E402
from bench.verify_accuracy import accuracy_with_and_without_cheater  # noqa: E402
from tests.verification_world import EOS_BOOST, announce, one_step_later, terms_of  # noqa: E402
from thinkmesh.coordinator.work.verifier import ContributionArchive, ContributionVerifier, round_dir  # noqa: E402
from thinkmesh.devnet.cheats import CHEAT_MODES, CheatInputs, apply_cheat, honest_contribution  # noqa: E402
from thinkmesh.node.model.tiny_model import TinyModelSpec, qwen2_config  # noqa: E402
from thinkmesh.node.model.tokenizer import build_tokenizer, vocabulary  # noqa: E402
from thinkmesh.protocol.rules.audit import AuditPolicy, probe_weights, probe_window_overlap, rescore_logprobs  # noqa: E402
from thinkmesh.protocol.rules.sampling import SAMPLING_TOLERANCE_BF16, SAMPLING_TOLERANCE_FP32  # noqa: E402
from thinkmesh.protocol.rules.audit_economics import detection_probability, minimum_probe_floor  # noqa: E402
from thinkmesh.protocol.rules.gradient_codec import decode_gradient  # noqa: E402
from thinkmesh.protocol.rules.identity import NodeIdentity  # noqa: E402
from thinkmesh.protocol.rules.strategies import strategy_from_name  # noqa: E402
from thinkmesh.coordinator.config import ChainConfig, RoundConfig  # noqa: E402
from thinkmesh.protocol.rules.adapters import trainable_named_parameters  # noqa: E402
from thinkmesh.protocol.rules.verification import (  # noqa: E402
    VerificationContext,
    verify_contribution,
    with_seen,
)

COMPRESSIONS = ("none", "fp16", "uniform8", "blockwise8")
STRATEGY = dataclasses.replace(strategy_from_name("grpo"), beta=0.0, group_size=8, max_new_tokens=48, overlong_buffer=32)


# (module, function, phase): the pipeline's own steps, timed where the pipeline looks them up.
VERIFY_PHASES = (
    (coordinator_verifier, "encode_message", "hashing: encode contribution (also signature payload, evidence, archive)"),
    (coordinator_verifier, "contribution_digests", "hashing (contribution, samples, gradient digest)"),
    (verification, "first_failure", "model-free checks (signature, terms, root, prompt set, shape and stop, replay)"),
    (verification, "completion_text", "rewards: decode"),
    (verification, "recompute_rewards", "rewards: recompute"),
    (verification, "reward_findings", "rewards: compare"),
    (verification, "decode_audited_gradient", "gradient decode (audited tensors)"),
    (verification, "prompt_ids_for", "prompt regeneration + tokenize"),
    (verification, "rescore_logprobs", "logprob prefill (no gradient audit)"),
    (verification, "recompute_gradient", "probe / full: forward + backward"),
    (verification, "logprob_findings", "logprob compare"),
    (verification, "sampling_findings", "sampling proof compare (the replay runs inside the forward)"),
    (verification, "gradient_findings", "gradient compare (codec round trip, cosine)"),
    (coordinator_verifier, "build_evidence", "evidence: build"),
    (coordinator_verifier, "store_evidence", "evidence: encode, write (+ keccak for rejections)"),
    (ContributionArchive, "save", "archive accepted contribution (link to its evidence)"),
)
PRODUCE_PHASES = (
    (contribution_step, "collect_rollouts", "generation (rollouts + rewards)"),
    (contribution_step, "policy_gradient", "forward + backward"),
    (contribution_step, "encode_gradient", "gradient codec"),
    (contribution_step, "samples_root", "samples root"),
    (contribution_step, "sign_message", "sign"),
)


class PhaseClock:
    """Accumulates wall seconds per phase by wrapping module attributes; `total` gets the rest."""

    def __init__(self, phases):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls, self.total_s, self.armed = 0, 0.0, False
        for owner, name, phase in phases:
            setattr(owner, name, self._timed(getattr(owner, name), phase))

    def _timed(self, function, phase):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self.armed:
                    self.seconds[phase] += time.perf_counter() - started
        return timed

    def run(self, function, *args, **kwargs):
        """`function(*args, **kwargs)` as one measured call: (result, wall seconds)."""
        self.armed, started = True, time.perf_counter()
        try:
            result = function(*args, **kwargs)
        finally:
            self.armed, elapsed = False, time.perf_counter() - started
        self.calls, self.total_s = self.calls + 1, self.total_s + elapsed
        return result, elapsed

    def per_call(self) -> dict[str, float]:
        """Mean seconds per measured call by phase, plus "other" (whatever no phase covers)."""
        named = {phase: seconds / self.calls for phase, seconds in sorted(self.seconds.items())}
        named["other"] = self.total_s / self.calls - sum(named.values())
        return {phase: round(seconds, 4) for phase, seconds in named.items()}


def build_model():
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(qwen2_config(TinyModelSpec()), attn_implementation="sdpa")
    with torch.no_grad():
        model.get_input_embeddings().weight[vocabulary()["<eos>"]] *= EOS_BOOST
    model.config.architectures = [type(model).__name__]
    return model.eval()


def draw_gap_rates(contributions, announcement, model, tokenizer) -> dict:
    """Every token of `contributions` re-scored under `model` (float32) with its draw replayed:
    the share of tokens whose gap exceeds each tolerance, the share of samples with at least one,
    and the largest gap seen."""
    gaps, rows = [], []
    for contribution in contributions:
        prompts = verification.prompt_ids_for(announcement, contribution.node_key, tokenizer)
        indices = range(len(contribution.samples))
        rescored = rescore_logprobs(model, prompts, contribution.samples, indices, contribution.strategy.temperature,
                                    tokenizer.pad_token_id or 0, verification.draw_check(announcement, contribution, indices))
        for row in rescored.draw_gaps.values():
            gaps += row
            rows.append(max(row))
    out = {"tokens": len(gaps), "samples": len(rows), "max_gap": max(gaps)}
    for name, tolerance in (("fp32", SAMPLING_TOLERANCE_FP32), ("bf16", SAMPLING_TOLERANCE_BF16)):
        out[f"token_rate_over_{name}_tolerance"] = sum(g > tolerance for g in gaps) / len(gaps)
        out[f"sample_rate_over_{name}_tolerance"] = sum(g > tolerance for g in rows) / len(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--honest", type=int, default=200)
    parser.add_argument("--cheats", type=int, default=50)
    parser.add_argument("--partial-trials", type=int, default=60)
    parser.add_argument("--full-every", type=int, default=4, help="also fully audit every n-th honest contribution (timing)")
    parser.add_argument("--ab-floors", type=lambda text: [float(x) for x in text.split(",") if x], default=[1.0, 0.2],
                        help="probe floors timed against the policy's on the same contributions (1: uniform)")
    parser.add_argument("--bf16-nodes", type=int, default=24, help="honest contributions sampled by a bfloat16 copy")
    parser.add_argument("--max-new-tokens", type=int, default=STRATEGY.max_new_tokens)
    parser.add_argument("--template", default="r1-compact", choices=("r1", "r1-compact"))
    parser.add_argument("--accuracy-rounds", type=int, default=4, help="0 skips the accuracy runs")
    parser.add_argument("--accuracy-heldout", type=int, default=128, help="distinct held-out problems (linear-1 has 150)")
    parser.add_argument("--accuracy-trials", type=int, default=4, help="round-seed sets the accuracy is averaged over")
    args = parser.parse_args()
    strategy = dataclasses.replace(STRATEGY, max_new_tokens=args.max_new_tokens, overlong_buffer=(2 * args.max_new_tokens) // 3)
    torch.set_num_threads(1)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    coordinator = NodeIdentity.from_seed(b"\xc0" * 32)
    nodes = [NodeIdentity.from_seed(i.to_bytes(32, "big")) for i in range(1, args.honest + 1)]
    old_model = build_model()
    old_round = announce(coordinator, old_model, 1, b"\x11" * 32, template=args.template, terms=terms_of(strategy))
    old = [honest_contribution(old_model, tokenizer, old_round, n, strategy) for n in nodes[: args.cheats]]
    shapes = {name: tuple(p.shape) for name, p in old_model.named_parameters()}
    model = one_step_later(old_model, decode_gradient(old[0].gradient, shapes))
    current = announce(coordinator, model, 2, b"\x22" * 32, template=args.template, terms=terms_of(strategy))
    policy = AuditPolicy()
    context = VerificationContext(frozenset(n.public_key for n in nodes), policy=policy, beacon=b"post-deadline")

    # The coordinator's own step, evidence and archive included; a second one with a cheaper
    # policy (probe 10%, full 5%) timed on the same contributions: the cost/detection trade.
    # The measured verifier writes to disk like a coordinator; the shadow ones (A/B arms, cheap, full)
    # to a tmpfs where there is one: five verifiers' evidence (~3 MB each per contribution) outruns
    # this disk's sustained writeback (~400 MB/s), and its throttling would be charged to the one
    # being measured, which alone writes ~45 MB/s.
    scratch = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    shadow = Path(tempfile.mkdtemp(prefix="bench-verify-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    registry = {n.public_key: f"0x{i:040x}" for i, n in enumerate(nodes)}

    def make_verifier(name: str, audit: AuditPolicy, root: Path = shadow) -> ContributionVerifier:
        return ContributionVerifier(
            model=model, tokenizer=tokenizer, policy=audit, coordinator_seed=b"bench-" + name.encode(),
            evidence_dir=root / name / "evidence", archive=ContributionArchive(root / name / "archive"),
            registry=lambda: registry,
        )

    verifier = make_verifier("main", policy, scratch)
    cheap = make_verifier("cheap", AuditPolicy(probe_rate=0.1, full_gradient_rate=0.05))
    # A/B of the probe's weights on the same contributions: the policy's weighted draw against other
    # floors (1: uniform over all parameters), everything else equal, verified in rotating order.
    arms = {"weighted": (policy, make_verifier("weighted", policy))}
    for floor in args.ab_floors:
        label = "uniform" if floor == 1.0 else f"floor_{floor}"
        arms[label] = (dataclasses.replace(policy, probe_floor=floor), make_verifier(label, dataclasses.replace(
            policy, probe_floor=floor)))
    # At a low full_gradient_rate the plan draws a handful of full audits (200 x 0.01: 2 +- 1.4), too few
    # for a mean: a verifier that fully audits every `--full-every`-th contribution times that level.
    full_only = make_verifier("full", dataclasses.replace(policy, full_gradient_rate=1.0))
    for item in (verifier, cheap, full_only, *(v for _, v in arms.values())):
        item.open_round(current.round_id)
    # Warm-up, untimed: first-use imports (torch kernels, the codec) and
    # allocator growth happen once per process on either side, not once per round.
    warm = NodeIdentity.from_seed(b"\xee" * 32)
    for compression in COMPRESSIONS:
        verify_contribution(current, honest_contribution(model, tokenizer, current, warm, strategy, compression), model,
                            tokenizer, dataclasses.replace(context, registered_nodes=None))
    produce_clock, verify_clock = PhaseClock(PRODUCE_PHASES), PhaseClock(VERIFY_PHASES)
    honest, produce_s, verify_s, cheap_s, full_s, false_positives = [], [], [], [], [], []
    levels: dict[str, list[float]] = defaultdict(list)
    arm_levels: dict[str, dict[str, list[float]]] = {label: defaultdict(list) for label in arms}
    for index, node in enumerate(nodes):
        contribution, produced = produce_clock.run(
            honest_contribution, model, tokenizer, current, node, strategy, COMPRESSIONS[index % 4])
        outcome, verified = verify_clock.run(verifier.verify, current, contribution)
        labels = list(arms)
        for label in labels[index % len(labels):] + labels[: index % len(labels)]:
            arm_outcome = arms[label][1].verify(current, contribution)
            arm_levels[label][arm_outcome.report.gradient_audit].append(arm_outcome.seconds)
            if not arm_outcome.accepted:
                false_positives.append({"node": index, "reason": arm_outcome.report.reason, "policy": label})
        if index % args.full_every == 0:
            full_outcome = full_only.verify(current, contribution)
            full_s.append(full_outcome.seconds)
            if not full_outcome.accepted:
                false_positives.append({"node": index, "reason": full_outcome.report.reason, "policy": "full"})
        cheap_outcome = cheap.verify(current, contribution)
        cheap_s.append(cheap_outcome.seconds)
        if not cheap_outcome.accepted:
            false_positives.append({"node": index, "reason": cheap_outcome.report.reason, "policy": "cheap"})
        if index % 25 == 24:  # the shadows' files are never read: freed, so tmpfs pages are reused, not grown
            for item in (cheap, full_only, *(v for _, v in arms.values())):
                shutil.rmtree(round_dir(item.evidence_dir, current.round_id), ignore_errors=True)
                item.archive.discard_round(current.round_id)
        produce_s.append(produced)
        verify_s.append(verified)
        honest.append(contribution)
        report = outcome.report
        levels[report.gradient_audit].append(verified)
        if not report.accepted:
            false_positives.append({"node": index, "reason": report.reason, "findings": [dataclasses.asdict(f) for f in report.findings[:3]]})

    # The round's one durability barrier (verdict files are written without fsync until it), shared
    # out over the round's contributions and counted in the headline ratio.
    synced_at = time.perf_counter()
    verifier.sync_round(current.round_id)
    sync_s = (time.perf_counter() - synced_at) / len(honest)

    # The originals of copied/replayed work were accepted earlier: the verifier has seen them.
    seen = context
    for contribution in old:
        seen = with_seen(seen, verify_contribution(old_round, contribution, old_model, tokenizer, seen))
    for contribution in honest[args.cheats: 2 * args.cheats]:
        seen = with_seen(seen, verify_contribution(current, contribution, model, tokenizer, seen))

    detection, reasons = {}, {}
    for mode in CHEAT_MODES:
        caught, counts = 0, {}
        for i in range(args.cheats):
            inputs = CheatInputs(
                announcement=current, identity=nodes[i], honest=honest[i], model=model, tokenizer=tokenizer,
                stale_model=old_model, peer=honest[args.cheats + i], old=old[i], seed=i,
            )
            report = verify_contribution(current, apply_cheat(mode, inputs), model, tokenizer, seen)
            caught += not report.accepted
            counts[report.reason] = counts.get(report.reason, 0) + 1
        detection[mode] = caught / args.cheats
        reasons[mode] = counts

    # One faked group of two, logprobs only (no gradient audit), m = 2 of n = 16 samples re-scored.
    blind = dataclasses.replace(context, policy=AuditPolicy(probe_rate=0.0, full_gradient_rate=0.0, logprob_samples=2))
    partial_caught = 0
    for i in range(args.partial_trials):
        inputs = CheatInputs(current, nodes[i], honest[i], model, tokenizer, fraction=0.5)
        cheat = apply_cheat("made-up-logprobs", inputs)
        partial_caught += not verify_contribution(current, cheat, model, tokenizer, blind).accepted

    # A cheater who knows the probe's weights: the tensors the window holds (the ones drawn most
    # often, and the cheapest to compute) over all samples, the rest over half of them. Caught with
    # q + (1 - q) * W(faked tensors) per contribution, which is below 99% by design: what deters it is
    # money (docs/verification.md, "The probe"), checked here at the default stake and pay.
    trainable = trainable_named_parameters(model)
    names, sizes = [name for name, _ in trainable], [p.numel() for _, p in trainable]
    windowed = tuple(name for name, m in zip(names, probe_window_overlap(sizes, policy.probe_window)) if m)
    stake, payout = float(ChainConfig.model_fields["slash_amount"].default), float(
        ChainConfig.model_fields["reward_per_prompt"].default) * RoundConfig.model_fields["prompts_per_node"].default
    weight_aware = {"honest_tensors": list(windowed), "trials": args.partial_trials}
    for label, (audit, _) in arms.items():
        weights = probe_weights(sizes, audit.probe_floor, audit.probe_window)
        faked_weight = sum(w for name, w in zip(names, weights) if name not in windowed) / sum(weights)
        checked, outcomes = dataclasses.replace(context, policy=audit), defaultdict(int)
        for i in range(args.partial_trials):
            cheat = apply_cheat("partial-gradient", CheatInputs(current, nodes[i], honest[i], model, tokenizer,
                                                                 honest_tensors=windowed))
            report = verify_contribution(current, cheat, model, tokenizer, checked)
            outcomes[f"{report.gradient_audit}: {report.reason}"] += 1
        caught = sum(count for outcome, count in outcomes.items() if not outcome.endswith(": ok"))
        q = audit.full_gradient_rate
        weight_aware[label] = {"measured": round(caught / args.partial_trials, 3),
                               "predicted": round(q + (1 - q) * audit.probe_rate * faked_weight, 3),
                               "outcomes": dict(sorted(outcomes.items()))}
    weight_aware["default_stake_and_payout"] = {"slash": stake, "payout_at_most": payout}
    weight_aware["break_even_detection_if_it_saved_the_whole_payout"] = round(payout / (payout + stake), 4)
    weight_aware["minimum_probe_floor"] = round(minimum_probe_floor(stake, payout, policy.full_gradient_rate,
                                                                    policy.probe_rate), 4)
    weight_aware["minimum_probe_floor_without_full_audit"] = round(minimum_probe_floor(stake, payout), 4)

    # The sampling proof's honest mismatch: fp32 node vs fp32 verifier (kernel order only), and a
    # bfloat16 node (what a GPU node runs) against the float32 verifier, on this CPU.
    sampling_fp32 = draw_gap_rates(honest, current, model, tokenizer)
    low = copy.deepcopy(model).to(torch.bfloat16)
    bf16 = [honest_contribution(low, tokenizer, current, node, strategy) for node in nodes[: args.bf16_nodes]]
    sampling_bf16 = draw_gap_rates(bf16, current, model, tokenizer)

    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(shadow, ignore_errors=True)
    accuracy = (accuracy_with_and_without_cheater(args.accuracy_rounds, args.accuracy_heldout, trials=args.accuracy_trials)
                if args.accuracy_rounds > 0 else {"accuracy_all_honest": None, "accuracy_with_cheater": None})
    n = len(honest[0].samples)
    produce_mean = statistics.fmean(produce_s)

    # The plan's draws give each level its share only on average (200 contributions: full ~20 +- 4):
    # the same means weighted by the policy's own rates, so a lucky draw cannot flatter the ratio.
    # The full level's mean pools the plan's own full audits with the dedicated ones.
    def at_rates(by_level, audit: AuditPolicy, full_rate: float | None = None) -> float | None:
        full = audit.full_gradient_rate if full_rate is None else full_rate
        shares = {"full": full, "probe": (1 - full) * audit.probe_rate}
        shares["none"] = 1 - shares["full"] - shares["probe"]
        by_level = {**by_level, "full": by_level.get("full", []) + full_s}
        if not all(by_level.get(level) for level, share in shares.items() if share > 0):
            return None
        return sum(share * statistics.fmean(by_level[level]) for level, share in shares.items() if share > 0)

    nominal = at_rates(levels, policy)
    nominal = None if nominal is None else nominal + sync_s
    probe_ab = {}
    for label, (audit, _) in arms.items():
        by_level = arm_levels[label]
        row = {f"{level}_s": {"contributions": len(times), "mean": round(statistics.fmean(times), 4)}
               for level, times in sorted(by_level.items())}
        for rate in sorted({0.1, policy.full_gradient_rate}):
            cost = at_rates(by_level, audit, rate)
            row[f"cost_ratio_at_full_rate_{rate}"] = round(cost / produce_mean, 4) if cost else None
        probe_ab[label] = {"probe_floor": audit.probe_floor, "probe_window": audit.probe_window, **row}
    print(json.dumps({
        "cost_ratio": round(statistics.fmean(verify_s) / statistics.fmean(produce_s), 4),
        "cost_ratio_at_policy_rates": round(nominal / produce_mean, 4) if nominal else None,
        "probe_weights_ab": probe_ab,
        "verify_s_mean": round(statistics.fmean(verify_s), 4),
        "round_close_sync_s_per_contribution": round(sync_s, 5),
        "verify_breakdown_s": verify_clock.per_call(),
        "produce_breakdown_s": produce_clock.per_call(),
        "verify_s_by_audit_level": {level: {"contributions": len(times), "mean_s": round(statistics.fmean(times), 4)}
                                    for level, times in sorted(levels.items())},
        "verify_s_full_audit_of_every_nth": {"every": args.full_every, "contributions": len(full_s),
                                             "mean_s": round(statistics.fmean(full_s), 4) if full_s else None},
        "cost_ratio_cheap_policy": round(statistics.fmean(cheap_s) / statistics.fmean(produce_s), 4),
        "cheap_policy": "probe_rate 0.1, full_gradient_rate 0.05: gradient cheats caught with p ~0.15 per contribution",
        "produce_s_mean": round(statistics.fmean(produce_s), 4),
        "detection_rate": detection,
        "rejection_reasons": reasons,
        "false_positive_rate": len(false_positives) / len(honest),
        "honest_sampling_mismatch_rate": sampling_fp32["sample_rate_over_fp32_tolerance"],
        "sampling_gaps_fp32_node": sampling_fp32,
        "sampling_gaps_bf16_node_vs_fp32_verifier": sampling_bf16,
        "false_positives": false_positives[:5],
        "honest_contributions": len(honest),
        "cheating_contributions_per_mode": args.cheats,
        "partial_made_up_logprobs": {
            "n": n, "faked": strategy.group_size, "rescored": 2, "trials": args.partial_trials,
            "measured": round(partial_caught / args.partial_trials, 3),
            "predicted": round(detection_probability(n, strategy.group_size, 2), 3),
        },
        "partial_gradient_weight_aware": weight_aware,
        **accuracy,
        "policy": dataclasses.asdict(policy),
        "setup": {"model_params": sum(p.numel() for p in model.parameters()), "samples_per_contribution": n,
                  "max_new_tokens": strategy.max_new_tokens, "template": args.template, "torch_threads": 1,
                  "mean_completion_tokens": round(statistics.fmean(len(s.completion_ids) for c in honest for s in c.samples), 1)},
        "wall_s": round(time.perf_counter() - started, 1),
    }, default=str))


if __name__ == "__main__":
    main()
