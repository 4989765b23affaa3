"""Adapter rounds end to end: anvil, the ledger, real p2pd daemons, a tiny model under a LoRA.

The coordinator runs with `[adapter]`: its base model stays frozen, pinned by hash; rounds train,
verify, aggregate and sync a rank-2 LoRA on every linear layer. alice holds the same base locally
(found by hash, never fetched); bob starts from another base directory of the same architecture
and fetches the announced base once over P2P. After that both download only adapters: the bytes
each node fetched are counted against the adapter's and the full model's sizes. mallory makes up
logprobs, which the verifier re-scores under base + adapter: rejected, slashed, never paid; a third
party re-runs that verdict (`verify-evidence --model BASE`, the adapter found beside the evidence);
bob keeps the fetched base on disk by hash; `traces export` names each trace's version.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.models import boost_eos
from tests.e2e.polling import wait_for
from tests.e2e.test_mesh import get_status
from tests.e2e.test_settlement import PASSWORD, PaidMesh, anvil  # noqa: F401 (the fixture)
from thinkmesh.devnet.configs import merge_tables
from thinkmesh.protocol.cli.main import main as cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = (("alice", "dapo", "uniform8", None), ("bob", "gspo", "fp16", "other-base"),
         ("mallory", "dapo", "blockwise8", "made-up-logprobs"))
RANK = 2


class AdapterMesh(PaidMesh):
    def __init__(self, root, anvil):
        super().__init__(root, anvil, cheat={})
        from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir
        from thinkmesh.protocol.keys.keystore import create_keys
        from thinkmesh.protocol.chain.ledger import tokens

        self.other_base = root / "other-base"  # same architecture and tokenizer, other weights
        init_model_dir(self.other_base, TinyModelSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                                      intermediate_size=128, max_positions=512), seed=7)
        boost_eos(self.other_base)
        self.keys.pop("carol")  # PaidMesh's third honest node: not in this mesh
        for name in [n for n, *_ in NODES if n not in self.keys]:
            self.keys[name] = create_keys(root / "keys" / name, PASSWORD, kdf="light")
            anvil.rpc("anvil_setBalance", [self.keys[name].evm_address, hex(10**20)])
            self.admin.mint(self.keys[name].evm_address, tokens(50))

    def coordinator_config(self, rounds: int, min_peers: int | None = None, overrides: dict | None = None):
        ours = {"round": {"close_when": len(NODES), "min_peers": len(NODES)}, "adapter": {"rank": RANK, "alpha": 4.0}}
        return super().coordinator_config(rounds, min_peers, merge_tables(ours, overrides or {}))

    def start_nodes(self) -> None:
        wait_for(lambda: (self.root / "coordinator.maddrs").exists(), 120, "the coordinator's multiaddrs")
        for name, preset, compression, special in NODES:
            own_base = {"base_model": str(self.other_base)} if special == "other-base" else {}
            path = self.node_config(name, preset, compression, own_base)
            argv = ["node", "run", "--config", str(path)]
            if special and not own_base:
                argv = ["devnet", "node-run", "--config", str(path), "--cheat", special]
            self.start(name, argv)


@pytest.mark.timeout(300)
def test_adapter_rounds_settle_slash_a_cheater_and_sync_only_adapters(tmp_path, anvil):  # noqa: F811
    from thinkmesh.protocol.rules.adapters import lora_parameter_count
    from thinkmesh.protocol.rules.slashing import SlashReason

    mesh = AdapterMesh(tmp_path, anvil)
    try:
        mesh.start_coordinator(rounds=2, min_peers=len(NODES))
        mesh.start_nodes()
        wait_for(lambda: (s := get_status(tmp_path / "coordinator.port")) and s["phase"] == "done"
                 and len(mesh.journal()) == 2 and mesh.journal()[-1].done, 240, "rounds 1 and 2 to settle")
        status = get_status(tmp_path / "coordinator.port")
        rounds = status["rounds"]
        assert status["adapter"]["rank"] == RANK and status["base_hash"]
        assert [r["model_version_after"] for r in rounds] == [1, 2]  # each round stepped the adapter
        peer_of = {name: mesh.keys[name].identity.peer_id for name in mesh.keys}
        for record, intent in zip(rounds, mesh.journal(), strict=True):
            assert {c["peer_id"] for c in record["contributors"]} == {peer_of["alice"], peer_of["bob"]}, record
            assert {r["peer_id"]: r["reason"] for r in record["rejected"]} == {peer_of["mallory"]: "logprob-mismatch"}
            assert {s.node: SlashReason(s.reason).verdict_reason for s in intent.slashes} == {
                mesh.address("mallory"): "logprob-mismatch"}
            assert mesh.reader.round(intent.round_id).status.name == "SETTLED"
        assert not mesh.reader.events.compensations(node=mesh.address("mallory"))
        assert {c.round_id for c in mesh.reader.events.compensations(node=mesh.address("alice"))} == {1, 2}

        # On chain and on the dashboard a version is base + adapter, with its accepted traces; the
        # strategies' values (of the adapter updates) are published per strategy
        from thinkmesh.coordinator.dashboard.ledger_snapshot import read_snapshot
        from thinkmesh.coordinator.dashboard.ledger_view import build_summary

        summary = build_summary(read_snapshot(mesh.reader))
        assert [(v.base_model_hash, v.model_hash, v.training_rounds) for v in summary.versions] == [
            ("0x" + status["base_hash"], "0x" + r["model_hash_before"], 1) for r in rounds]
        assert all(v.accepted_traces > 0 for v in summary.versions)
        assert {row.strategy for row in summary.strategies} == {"dapo", "gspo"}

        # Bytes: the base at most once (bob, whose own base differs), then adapters only.
        config = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "num_hidden_layers": 2}
        adapter_bytes = 4 * lora_parameter_count(config, RANK)
        full_bytes = status["base_bytes"]  # fp32
        for name in ("alice", "bob"):
            node = get_status(tmp_path / f"node-{name}.port")
            counters = node["counters"]
            assert node["base_hash"] == status["base_hash"], name
            # version 0's adapter is the seeded init (B = 0) a node builds itself: fetched are the later ones
            assert 1 <= counters["models_fetched"] <= 2, counters
            assert counters["model_bytes_fetched"] <= counters["models_fetched"] * (adapter_bytes + 4096), counters
            expected_base = (0, 0) if name == "alice" else (full_bytes // 2, full_bytes + 64 * 1024)  # zlib on the wire
            assert expected_base[0] <= counters["base_bytes_fetched"] <= expected_base[1], (name, counters)
            assert adapter_bytes < 0.05 * full_bytes
            for entry in node["history"]:  # uploads are adapter gradients (tiny LoRA tensors stay fp32/16-bit)
                assert entry["gradient_bytes"] <= adapter_bytes + 16384, entry
        # bob keeps the base it fetched, by hash, so a restart does not fetch it again; alice fetched none
        assert (tmp_path / "node-bob" / "bases" / f"{status['base_hash']}.safetensors").is_file()
        assert not (tmp_path / "node-alice" / "bases").exists()

        # A third party re-runs mallory's verdict on base + adapter: the adapter lies beside the evidence
        evidence = (tmp_path / "coordinator" / "evidence" / "round-000001"
                    / f"{mesh.keys['mallory'].identity.public_key.hex()}.evidence")
        assert cli(["verify-evidence", str(evidence), "--model", str(mesh.base)]) == 0
        assert cli(["verify-evidence", str(evidence), "--model", str(mesh.other_base)]) == 1  # not the round's base

        # The traces of adapter rounds export with the version they were sampled under
        out = tmp_path / "traces.jsonl"
        assert cli(["traces", "export", "--config", str(tmp_path / "coordinator.toml"), "--rounds", "1..2", str(out)]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert {line["round_id"] for line in lines} == {1, 2}
        assert {line["base_hash"] for line in lines} == {status["base_hash"]}
        assert len({line["model_hash"] for line in lines}) == 2  # each round's adapter version
    except BaseException:
        mesh.dump_logs()
        raise
    finally:
        mesh.stop_all()
