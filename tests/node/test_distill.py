"""`thinkmesh distill`: rejection sampling from a teacher directory, and verified on-chain traces, into a
student's SFT. Tiny models throughout; the traces test settles a hand-built round on a real anvil."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from thinkmesh.protocol.cli.main import main
from thinkmesh.node.local.distill import (
    DATASET_FILE, DISTILL_STREAM_KEY, SUMMARY_FILE, Dataset, DistillError, RejectionSettings, distill_prompts,
    spec_seed, teacher_hash, train_student,
)
from thinkmesh.node.model.model_dir import load_model, load_tokenizer, weights_sha256
from thinkmesh.protocol.rules.evaluation import heldout_tasks
from thinkmesh.protocol.rules.rewards import score_completion
from thinkmesh.protocol.rules.rollout import SamplingSettings, generate
from thinkmesh.protocol.rules.sampling import row_key, stop_rule_for
from thinkmesh.protocol.rules.scoring import completion_text, prompt_token_ids
from thinkmesh.protocol.rules.tasks import TaskSpec, is_heldout, render_prompt, trainable_task

LINEAR = TaskSpec("linear", 1)


@pytest.mark.timeout(120)
def test_teacher_dataset_keeps_only_correct_reproducible_non_heldout_samples(tmp_path, coldstarted_micro_dir):
    """Through the command line: every kept example names the teacher version, task, seed, index and
    row it came from, regenerates bit for bit from them, scores accuracy 1 and format 1, and is
    no held-out problem; the student is trained on exactly that file."""
    teacher = coldstarted_micro_dir
    out = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher), "--student-arch", "micro", "--out", str(out), "--prompts", "48",
            "--samples", "4", "--keep-per-prompt", "2", "--epochs", "1", "--batch-size", "8", "--json"]
    assert main(argv) == 0

    records = [json.loads(line) for line in (out / DATASET_FILE).read_text().splitlines()]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["sampled"] == 48 * 4 and summary["examples"] == len(records) > 0
    model, tokenizer = load_model(teacher), load_tokenizer(teacher)
    version = teacher_hash(model)
    heldout = {task.question for task in heldout_tasks(LINEAR, 150)}
    stop = stop_rule_for(tokenizer)
    per_prompt: dict[str, int] = {}
    for record in records:
        assert record["source"] == "teacher" and record["teacher_hash"] == version == summary["teacher_hash"]
        spec = TaskSpec(record["task"]["family"], record["task"]["difficulty"])
        assert record["seed"] == spec_seed(spec, 0).hex()
        task = trainable_task(spec, bytes.fromhex(record["seed"]), record["index"])
        assert record["prompt"] == render_prompt(task, record["template"])
        assert not is_heldout(task) and task.question not in heldout
        sampling = SamplingSettings(**{k: record["sampling"][k] for k in ("temperature", "top_p", "max_new_tokens")})
        key = row_key(bytes.fromhex(record["seed"]), DISTILL_STREAM_KEY, record["index"], record["row"])
        (again,) = generate(model, [prompt_token_ids(tokenizer, record["prompt"])], sampling, stop,
                            tokenizer.pad_token_id, tokenizer=tokenizer, keys=[key])
        assert completion_text(tokenizer, again.token_ids) == record["completion"]
        rewards = score_completion(task, record["completion"], len(again.token_ids), sampling.max_new_tokens)
        assert rewards.accuracy == 1.0 and rewards.format == 1.0
        per_prompt[record["prompt"]] = per_prompt.get(record["prompt"], 0) + 1
    assert max(per_prompt.values()) <= 2
    assert weights_sha256(out) != weights_sha256(teacher)
    assert summary["sft"]["epochs"] == 1 and summary["heldout_partition"]


def test_prompts_are_a_pure_function_of_the_settings_and_never_held_out():
    settings = RejectionSettings(families=("linear", "arithmetic"), prompts=40)
    prompts = distill_prompts(settings)
    assert [(s, seed, i, t.question) for s, seed, i, t in prompts] == [
        (s, seed, i, t.question) for s, seed, i, t in distill_prompts(settings)]
    assert [s.family for s, _, _, _ in prompts[:4]] == ["linear", "arithmetic", "linear", "arithmetic"]
    assert not any(is_heldout(task) for _, _, _, task in prompts)
    assert distill_prompts(dataclasses.replace(settings, seed=1))[0][1] != prompts[0][1]


def test_nothing_kept_is_an_error_not_an_untrained_student(tmp_path, micro_model_dir):
    with pytest.raises(DistillError, match="kept 0 of 12 samples"):
        train_student(micro_model_dir, Dataset((), 12), tmp_path / "out")


def test_command_line_refuses_zero_or_two_sources(tmp_path, capsys):
    out = ["--student-arch", "micro", "--out", str(tmp_path / "out")]
    assert main(["distill", *out]) == 1
    assert main(["distill", "--teacher", str(tmp_path), "--rpc", "http://127.0.0.1:1", *out]) == 1
    assert main(["distill", "--teacher", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.count("expected exactly one") == 3


# ---- the verified-traces source ------------------------------------------------------------------


def _with_correct_first_sample(contribution, announcement, identity, round_id: int):
    """`contribution` moved to `round_id`, its first sample replaced by the task's reference
    completion scored by the rules (accuracy 1, format 1), signed again by its node."""
    from tests.verification_world import STRATEGY, world

    from thinkmesh.protocol.rules.messages import Sample, samples_root, sign_message
    from thinkmesh.protocol.rules.rewards import reference_completion
    from thinkmesh.protocol.rules.verification import node_tasks

    tokenizer = world().tokenizer
    task = node_tasks(announcement, contribution.node_key)[contribution.samples[0].prompt_index]
    ids = tuple(tokenizer.encode(reference_completion(task), add_special_tokens=False) + [tokenizer.eos_token_id])
    rewards = score_completion(task, completion_text(tokenizer, ids), len(ids), STRATEGY.max_new_tokens)
    assert rewards.accuracy == 1.0 and rewards.format == 1.0
    samples = (Sample(contribution.samples[0].prompt_index, ids, (0.0,) * len(ids), rewards), *contribution.samples[1:])
    return sign_message(dataclasses.replace(contribution, round_id=round_id, samples=samples,
                                            samples_root=samples_root(samples), signature=b"\0" * 64), identity)


def _settle(data_dir, ledger, announcement, accepted) -> int:
    """Writes what a coordinator keeps of a settled round (archive, evidence, journal) under
    `data_dir`, opens and settles it on chain; returns how many traces its tree holds."""
    from tests.verification_world import world

    from thinkmesh.coordinator.settlement.round_settlement import AcceptedEntry, SettlementIntent, SettlementJournal
    from thinkmesh.coordinator.work.verifier import ContributionArchive, round_dir
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.rules.evidence import build_evidence, evidence_bytes
    from thinkmesh.protocol.rules.generation import is_generation
    from thinkmesh.protocol.chain.ledger import RoundStats, seed_commitment
    from thinkmesh.protocol.rules.messages import sample_hash
    from thinkmesh.protocol.rules.traces import contribution_traces, traces_tree
    from thinkmesh.protocol.rules.verification import REASON_OK, VerificationReport

    archive = ContributionArchive(data_dir / "contributions")
    for contribution in accepted:
        archive.save(contribution)
        report = VerificationReport(REASON_OK, (), (), "none", b"\0" * 32,
                                    tuple(sample_hash(s) for s in contribution.samples), b"\0" * 32)
        path = round_dir(data_dir / "evidence", announcement.round_id) / f"{contribution.node_key.hex()}.evidence"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(evidence_bytes(build_evidence(announcement, contribution, report, world().context())))
    generation = is_generation(announcement)
    tree = traces_tree(leaf for c in accepted for leaf in contribution_traces(c, generation))
    stats = RoundStats.of(len(accepted), 0, 0.0, 0.0)
    SettlementJournal(data_dir / "settlement").write(SettlementIntent(
        announcement.round_id, announcement.seed, tree.root, stats, (), (),
        tuple(AcceptedEntry(c.node_key, None, len(c.samples), (), b"\0" * 32) for c in accepted), done=True,
        kind=announcement.kind))
    coordinator = LedgerClient.connect(ledger.rpc_url, discover_deployment(ledger.rpc_url, ledger.address),
                                       private_key=ledger.admin_key)
    coordinator.open_round(announcement.round_id, announcement.model_hash, seed_commitment(announcement.seed))
    coordinator.settle_round(announcement.round_id, announcement.seed, tree.root, (), stats)
    return len(tree.leaves)


@pytest.mark.timeout(120)
def test_chain_traces_dataset_carries_round_and_proof_and_refuses_an_archive_the_chain_does_not_hold(tmp_path):
    """Training round 2 (two accepted contributions, one correct trace among 16) and generation round 3
    (only its one correct trace is under the root), settled on anvil: the traces source keeps the two
    correct traces, each with its round and Merkle proof, and the dataset file passes `traces verify`
    as it stands. An archive rewritten after settlement (the local journal consistent with it, but not
    what the chain settled) is refused."""
    from tests.node.mesh_parts import anvil_ledger
    from tests.verification_world import world

    from thinkmesh.coordinator.settlement.round_settlement import SettlementJournal
    from thinkmesh.coordinator.ops.traces_commands import verify_traces
    from thinkmesh.coordinator.work.verifier import ContributionArchive
    from thinkmesh.devnet.distill_commands import verified_traces_dataset
    from thinkmesh.protocol.rules.generation import ROUND_KIND_GENERATION
    from thinkmesh.protocol.rules.messages import samples_root, sign_message
    from thinkmesh.protocol.rules.traces import contribution_traces, traces_tree

    w = world()
    training = (_with_correct_first_sample(w.honest[0], w.round, w.nodes[0], 2), w.honest[1])
    generation_round = sign_message(dataclasses.replace(w.round, round_id=3, kind=ROUND_KIND_GENERATION,
                                                        signature=b"\0" * 64), w.coordinator)
    generation = (_with_correct_first_sample(w.honest[2], generation_round, w.nodes[2], 3),)
    ledger_parts = anvil_ledger()
    _, ledger = next(ledger_parts)
    try:
        data_dir = tmp_path / "coordinator"
        in_training = _settle(data_dir, ledger, w.round, training)
        assert _settle(data_dir, ledger, generation_round, generation) == 1 and in_training == 16
        out = tmp_path / "student"
        base = ["distill", "--rpc", ledger.rpc_url, "--ledger", ledger.address, "--data-dir", str(data_dir),
                "--rounds", "2..3", "--student-arch", "micro", "--epochs", "1", "--batch-size", "4"]
        assert main([*base, "--out", str(out)]) == 0
        records = [json.loads(line) for line in (out / DATASET_FILE).read_text().splitlines()]
        summary = json.loads((out / SUMMARY_FILE).read_text())
        assert summary["sampled"] == in_training + 1 and summary["examples"] == len(records) == 2
        assert [(r["round_id"], r["round_kind"], r["node_key"], r["sample_index"]) for r in records] == [
            (2, "training", training[0].node_key.hex(), 0), (3, "generation", generation[0].node_key.hex(), 0)]
        assert [len(r["proof"]) for r in records] == [4, 0]  # 16 leaves; a one-leaf tree's root is its leaf
        for record in records:
            assert record["source"] == "traces" and record["completion"].endswith("</answer>")
            assert record["rewards"][:2] == [1.0, 1.0]
            assert summary["traces_roots"][str(record["round_id"])] == record["traces_root"]
        verify = argparse.Namespace(file=out / DATASET_FILE, rpc=ledger.rpc_url, ledger=ledger.address, json=True)
        assert verify_traces(verify) == 0
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text(json.dumps({**records[0], "completion_ids": records[0]["completion_ids"][1:]}) + "\n")
        assert verify_traces(argparse.Namespace(**{**vars(verify), "file": tampered})) == 1

        assert main([*base, "--keep", "all", "--out", str(tmp_path / "all")]) == 0
        assert json.loads((tmp_path / "all" / SUMMARY_FILE).read_text())["examples"] == in_training + 1

        # Rewrite node 1's archived round-2 contribution and the journal's root to match it: locally
        # consistent, but the chain settled the original root.
        changed = training[1]
        samples = (dataclasses.replace(changed.samples[0], logprobs=(-1.0,) * len(changed.samples[0].logprobs)),
                   *changed.samples[1:])
        changed = sign_message(dataclasses.replace(changed, samples=samples, samples_root=samples_root(samples),
                                                   signature=b"\0" * 64), w.nodes[1])
        ContributionArchive(data_dir / "contributions").save(changed)
        journal = SettlementJournal(data_dir / "settlement")
        intent = next(i for i in journal.load() if i.round_id == 2)
        root = traces_tree(leaf for c in (training[0], changed) for leaf in contribution_traces(c)).root
        journal.write(dataclasses.replace(intent, traces_root=root))
        with pytest.raises(DistillError, match="round 2 trace .* not under the round's settled traces root on chain"):
            verified_traces_dataset(ledger.rpc_url, ledger.address, data_dir, "2..3", out)
    finally:
        ledger_parts.close()
