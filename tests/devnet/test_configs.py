"""The devnet's config files load back, through the daemons' own loaders, as what was built."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinkmesh.coordinator.config import load_coordinator_config
from thinkmesh.devnet.configs import (
    ChainEndpoint,
    RoundPlan,
    config_toml,
    coordinator_config,
    node_config,
    require_cheat_mode,
    write_config,
)
from thinkmesh.devnet.processes import DevnetError
from thinkmesh.node.config import load_node_config

PLAN = RoundPlan(rounds=5, deadline_s=30.0, close_when=3, prompts_per_node=2, min_peers=3, eval_prompts=4,
                 eval_max_new_tokens=16, group_size=4, max_new_tokens=12, task_family="linear")
CHAIN = ChainEndpoint("http://127.0.0.1:8545", "0x" + "11" * 20, Path("/s/deployment.json"))


def test_coordinator_config_round_trips_through_its_loader(tmp_path):
    built = coordinator_config(
        base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys",
        password_file=tmp_path / "password", p2p_port=9002, http_port=9003, port_file=tmp_path / "port",
        maddrs_file=tmp_path / "maddrs", plan=PLAN, chain=CHAIN,
    )  # fmt: skip
    loaded = load_coordinator_config(write_config(built, tmp_path / "coordinator.toml"), environ={})
    assert loaded == built
    assert loaded.network.host_maddrs == ["/ip4/127.0.0.1/tcp/9002"]
    assert (loaded.round.rounds, loaded.round.close_when, loaded.round.task_family) == (5, 3, "linear")
    assert (loaded.chain.rpc_url, loaded.chain.ledger) == (CHAIN.rpc_url, CHAIN.ledger)
    assert loaded.chain.deployment_file == CHAIN.deployment_file


def test_a_seed_in_the_plan_sets_the_rounds_seed_and_none_keeps_the_coordinators_default(tmp_path):
    from dataclasses import replace

    from thinkmesh.coordinator.config import RoundConfig

    def seed_of(plan: RoundPlan) -> str:
        built = coordinator_config(
            base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys",
            password_file=None, p2p_port=None, port_file=tmp_path / "port", maddrs_file=tmp_path / "maddrs",
            plan=plan, chain=None,
        )  # fmt: skip
        return load_coordinator_config(write_config(built, tmp_path / "coordinator.toml"), environ={}).round.seed

    assert seed_of(replace(PLAN, seed="devlearn-2")) == "devlearn-2"
    assert seed_of(PLAN) == RoundConfig().seed


def test_node_config_round_trips_through_its_loader(tmp_path):
    built = node_config(
        coordinator_peer_id="12D3KooWExample", bootstrap=["/ip4/127.0.0.1/tcp/9002/p2p/12D3KooWExample"],
        base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys",
        password_file=None, strategy="dr_grpo", port_file=tmp_path / "port", plan=PLAN, chain=CHAIN,
    )  # fmt: skip
    path = write_config(built, tmp_path / "node.toml")
    loaded = load_node_config(path, environ={})
    assert loaded == built
    assert loaded.identity.password_file is None and "password_file" not in path.read_text()
    assert loaded.strategy.spec().name == "dr_grpo"
    assert (loaded.chain.rpc_url, loaded.chain.deployment_file) == (CHAIN.rpc_url, CHAIN.deployment_file)


def test_the_devnet_takes_every_cheat_a_running_node_can_make_and_no_other():
    from thinkmesh.devnet.cheats import CHEAT_MODES

    for mode in set(CHEAT_MODES) - {"copy-peer"}:  # a node of the star never sees a peer's contribution
        require_cheat_mode(mode)
    for mode in ("copy-peer", "free-money"):
        with pytest.raises(DevnetError, match="expected one of fake-rewards"):
            require_cheat_mode(mode)


def test_config_toml_escapes_strings_and_writes_only_the_keys_set():
    import tomllib

    from pydantic import BaseModel

    class Section(BaseModel):
        items: list[str] = []
        nothing: list[int] = []
        inner: dict[str, float] = {}
        unset: int = 7

    class Document(BaseModel):
        name: str
        n: int
        x: float
        on: bool
        skipped: str | None = None
        section: Section = Section()

    values = {"name": 'a "quoted"\\path\nand a newline', "n": 3, "x": 0.5, "on": True, "skipped": None,
              "section": {"items": ["a", "b"], "nothing": [], "inner": {"deep": 1.5}}}
    loaded = tomllib.loads(config_toml(Document.model_validate(values)))
    assert loaded == {key: value for key, value in values.items() if value is not None}


def test_an_adapter_devnet_writes_the_coordinator_s_adapter_section(tmp_path):
    import dataclasses

    from thinkmesh.devnet.profiles import profile_named

    profile = profile_named("micro").with_adapter(4)
    assert profile.adapter_rank == 4 and profile.lr == pytest.approx(profile_named("micro").lr * 10)
    with pytest.raises(DevnetError):
        profile_named("micro").with_adapter(0)
    built = coordinator_config(
        base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys",
        password_file=tmp_path / "password", p2p_port=9002, http_port=9003, port_file=tmp_path / "port",
        maddrs_file=tmp_path / "maddrs", plan=dataclasses.replace(PLAN, adapter_rank=4), chain=CHAIN,
    )  # fmt: skip
    loaded = load_coordinator_config(write_config(built, tmp_path / "coordinator.toml"), environ={})
    assert loaded.adapter is not None and (loaded.adapter.rank, loaded.adapter.alpha) == (4, 8.0)
    plain = coordinator_config(
        base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys",
        password_file=tmp_path / "password", p2p_port=9002, http_port=9003, port_file=tmp_path / "port",
        maddrs_file=tmp_path / "maddrs", plan=PLAN, chain=CHAIN,
    )  # fmt: skip
    assert plain.adapter is None


def test_a_bench_s_overrides_merge_table_by_table_and_are_validated(tmp_path):
    built = coordinator_config(
        base_model=tmp_path / "model", data_dir=tmp_path / "data", key_dir=tmp_path / "keys", password_file=None,
        p2p_port=None, port_file=tmp_path / "port", maddrs_file=tmp_path / "maddrs", plan=PLAN, chain=None,
        run_id="bench", overrides={"aggregation": {"rule": "mean"}, "round": {"start_delay_s": 0.0}},
    )  # fmt: skip
    text = config_toml(built)
    assert "password_file" not in text and "host_maddrs" not in text  # the environment's password, the default address
    assert (built.run_id, built.aggregation.rule, built.aggregation.lr) == ("bench", "mean", PLAN.lr)
    assert (built.round.start_delay_s, built.round.close_when) == (0.0, PLAN.close_when)
    with pytest.raises(DevnetError, match="upload_timeout"):
        node_config(
            coordinator_peer_id="12D3KooWExample", bootstrap=[], base_model=tmp_path / "model", data_dir=tmp_path / "d",
            key_dir=tmp_path / "keys", password_file=None, strategy="dapo", port_file=tmp_path / "port", plan=PLAN,
            chain=None, overrides={"round": {"upload_timeout": 5}},
        )  # fmt: skip


def test_the_devnets_dashboard_looks_serving_nodes_up_in_the_devnets_dht(tmp_path):
    from thinkmesh.devnet.up import dashboard_argv
    from thinkmesh.protocol.chain.ledger import Deployment
    from thinkmesh.protocol.cli.main import build_parser

    deployment = Deployment(chain_id=31337, ledger="0x" + "11" * 20, token="0x" + "22" * 20, block_number=3)
    bootstrap = ["/ip4/127.0.0.1/tcp/8547/p2p/12D3KooWExample", "/ip4/10.0.0.2/tcp/8547/p2p/12D3KooWExample"]
    args = build_parser().parse_args(dashboard_argv(rpc_url="http://127.0.0.1:8545", deployment=deployment, port=8546,
                                                    evidence_dir=tmp_path / "evidence", dht_peers=bootstrap))
    assert args.find_servers and args.initial_peers == bootstrap
    assert (args.ledger, args.from_block, args.port, args.evidence_dir) == (deployment.ledger, 3, 8546, tmp_path / "evidence")
