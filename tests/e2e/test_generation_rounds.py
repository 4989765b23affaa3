"""Generation rounds end to end: anvil, the ledger, real p2pd daemons, a cold-started micro model.

The coordinator announces a generation round (`[round] generation_every = 1`): nodes sample under
the round's terms and send their samples with an empty gradient. alice and bob are honest: verified,
paid `reward_per_trace` per accepted trace (accuracy 1 and format 1), their wrong traces left out
unslashed. mallory claims wrong traces correct (`fake-rewards`: reward-mismatch) and eve samples
hotter than the terms (`off-policy`: sampling-mismatch): both refused and slashed, never paid. The
model version stays; the accepted traces lie under the round's traces root on chain and come out of
`thinkmesh traces export`, each one correct and well formed.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.polling import wait_for
from tests.e2e.test_mesh import get_status
from tests.e2e.test_settlement import PaidMesh, anvil  # noqa: F401 (the fixture)
from thinkmesh.devnet.configs import merge_tables
from thinkmesh.protocol.cli.main import main as cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HONEST = (("alice", "grpo", "uniform8"), ("bob", "dapo", "fp16"))
CHEATERS = {"mallory": "fake-rewards", "eve": "off-policy"}
GROUP, TOKENS, PROMPTS = 8, 32, 3


class GenerationMesh(PaidMesh):
    def __init__(self, root, anvil):
        from thinkmesh.node.local.coldstart import ColdStartSettings, run_coldstart
        from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir

        super().__init__(root, anvil, cheat=CHEATERS, honest=HONEST, group_sizes={n: GROUP for n in ("alice", "bob", *CHEATERS)})
        micro = root / "micro-model"  # a model that is right sometimes: tests/node/conftest.py's cold start
        init_model_dir(micro, TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                            intermediate_size=128), seed=0)
        self.base = root / "generation-base"
        run_coldstart(micro, ColdStartSettings(families=("linear",), num_examples=1024, epochs=2, batch_size=16,
                                               lr=1e-2), out=self.base, progress=False)

    def coordinator_config(self, rounds, min_peers=None, overrides=None):
        ours = {"round": {"group_sizes": [GROUP], "max_new_tokens": [TOKENS], "prompts_per_node": PROMPTS,
                          "task_family": "linear", "template": "r1-compact", "generation_every": 1},
                "chain": {"reward_per_trace": "0.25"}}
        return super().coordinator_config(rounds, min_peers, merge_tables(ours, overrides or {}))

    def node_config(self, name, preset, compression, overrides=None):
        ours = {"strategy": {"max_new_tokens": TOKENS}}
        return super().node_config(name, preset, compression, merge_tables(ours, overrides or {}))


@pytest.mark.timeout(240)
def test_a_generation_round_pays_correct_traces_and_slashes_false_claims_and_off_policy_samples(tmp_path, anvil):  # noqa: F811
    from thinkmesh.protocol.rules.generation import trace_accepted
    from thinkmesh.protocol.chain.ledger import tokens
    from thinkmesh.protocol.rules.slashing import SlashReason
    from thinkmesh.protocol.rules.rewards import RewardBreakdown

    mesh = GenerationMesh(tmp_path, anvil)
    try:
        mesh.start_coordinator(rounds=1)
        mesh.start_nodes()
        wait_for(lambda: (s := get_status(tmp_path / "coordinator.port")) and s["phase"] == "done"
                 and len(mesh.journal()) == 1 and mesh.journal()[-1].done, 180, "the generation round to settle")
        status = get_status(tmp_path / "coordinator.port")
        (record,) = status["rounds"]
        (intent,) = mesh.journal()
        assert record["kind"] == "generation" and intent.kind == "generation"
        assert record["model_version_after"] == record["model_version_before"]  # no optimizer step
        peer_of = {name: mesh.keys[name].identity.peer_id for name in mesh.keys}
        assert {c["peer_id"] for c in record["contributors"]} == {peer_of["alice"], peer_of["bob"]}, record
        assert {r["peer_id"]: r["reason"] for r in record["rejected"]} == {
            peer_of["mallory"]: "reward-mismatch", peer_of["eve"]: "sampling-mismatch"}
        assert {s.node: SlashReason(s.reason).verdict_reason for s in intent.slashes} == {
            mesh.address("mallory"): "reward-mismatch", mesh.address("eve"): "sampling-mismatch"}
        for name in CHEATERS:  # slashed on chain, never paid
            assert mesh.reader.is_slashed(intent.round_id, mesh.address(name)), name
            assert not mesh.reader.events.compensations(node=mesh.address(name)), name
        assert mesh.reader.round(intent.round_id).traces_root == intent.traces_root

        # The accepted traces: exported with proofs under the settled root, each correct and well formed
        out = tmp_path / "traces.jsonl"
        rounds = f"{intent.round_id}..{intent.round_id}"
        assert cli(["traces", "export", "--config", str(tmp_path / "coordinator.toml"), "--rounds", rounds, str(out)]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert lines, "two honest nodes on a cold-started model should get some traces right"
        assert all(trace_accepted(RewardBreakdown(*line["rewards"])) for line in lines)
        assert len(lines) < 2 * PROMPTS * GROUP  # wrong traces are left out
        assert cli(["traces", "verify", str(out), "--rpc", anvil.rpc_url, "--ledger", mesh.deployment.ledger]) == 0

        # Paid per accepted trace: each honest node's award is its count of exported traces
        per_node = {name: sum(1 for line in lines if line["node"] == mesh.address(name)) for name in ("alice", "bob")}
        for name, count in per_node.items():
            (paid,) = mesh.reader.events.compensations(node=mesh.address(name))
            assert paid.verified_samples == count and paid.payout == count * tokens("0.25"), (name, paid)
            assert not mesh.reader.is_slashed(intent.round_id, mesh.address(name))

        # The chain says it was a generation round and at what pay; the dashboard shows it so
        from thinkmesh.coordinator.dashboard.ledger_snapshot import read_snapshot
        from thinkmesh.coordinator.dashboard.ledger_view import build_summary

        (described,) = mesh.reader.events.round_details(round_id=intent.round_id)
        assert (described.kind, described.reward_rate) == ("generation", tokens("0.25"))
        assert mesh.reader.events.strategy_values() == []  # no gradient, no contribution value
        summary = build_summary(read_snapshot(mesh.reader))
        (row,) = [r for r in summary.rounds if r.round_id == intent.round_id]
        assert (row.kind, row.reward_rate, row.total_samples) == ("generation", 0.25, len(lines))
        (version,) = summary.versions
        assert (version.generation_rounds, version.accepted_traces, version.model_hash) == (
            1, len(lines), "0x" + record["model_hash_before"])
    except BaseException:
        mesh.dump_logs()
        raise
    finally:
        mesh.stop_all()
