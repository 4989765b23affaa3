"""End to end, as a user runs it: `thinkmesh devnet up --nodes 3 --cheater random-gradient --rounds 3
--json`, then the chain it leaves behind, read three ways that must agree: the JSON summary, the
ledger read here event by event, and the dashboard's `/api/` over the same chain; then a second
`up` that resumes that chain, `devnet status` and `devnet down` from other processes.

`up` stops anvil after `--rounds` and saves its state; the test restarts anvil on that saved state
(as the next `up` would) and starts `thinkmesh dashboard` against it. On the suite's micro model the
honest nodes' rewards carry little or no signal (often an all-zero gradient), which is exactly the
edge where a verifier must still tell honest zeros from forged noise: the cheater must be slashed
in every round for a gradient mismatch and paid nothing, every honest node paid and never slashed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request

import pytest

from tests.e2e.polling import wait_for
from tests.e2e.test_devnet import ENV, MODEL_ARGS, free_base_port, logs_of, running_state, thinkmesh

from thinkmesh.devnet.layout import DevnetLayout, DevnetState
from thinkmesh.devnet.processes import pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 3
CHEATER = "cheater-random-gradient"
HONEST = ("node-1", "node-2", "node-3")


@pytest.mark.timeout(600)
def test_up_with_a_random_gradient_cheater_slashes_it_and_pays_the_honest_nodes(tmp_path, model_cache):
    state_dir = tmp_path / "devnet"
    layout = DevnetLayout(state_dir)
    run = subprocess.run(
        thinkmesh("devnet", "up", "--nodes", "3", "--cheater", "random-gradient", "--rounds", str(ROUNDS), "--json",
                  "--no-dashboard", "--base-port", str(free_base_port()), "--state-dir", str(state_dir),
                  "--cache-dir", str(model_cache), *MODEL_ARGS),
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, f"{run.stderr[-4000:]}\n{logs_of(layout)}"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    try:
        assert summary["rounds"] == summary["settled_rounds"] == ROUNDS
        nodes = {n["name"]: n for n in summary["nodes"]}
        assert sorted(nodes) == sorted((*HONEST, CHEATER))
        assert nodes[CHEATER]["cheater"] == "random-gradient"
        assert all(nodes[name]["cheater"] is False for name in HONEST)
        closed = [line for line in run.stderr.splitlines() if re.match(r"round \d+: closed", line)]
        assert len(closed) == ROUNDS and all("1 rejected (gradient-mismatch)" in line for line in closed), closed

        from thinkmesh.devnet.anvil import Anvil
        from thinkmesh.protocol.chain.ledger import Deployment

        state = DevnetState.load(layout)
        deployment = Deployment.load(layout.deployment_file)
        with Anvil(chain_id=state.chain_id, extra_args=("--load-state", str(layout.chain_state))) as chain:
            _assert_summary_is_the_chain(chain.rpc_url, deployment, layout, summary)
            _assert_dashboard_api_is_the_summary(chain.rpc_url, deployment, layout, tmp_path, summary)
    except Exception:
        print(run.stderr[-4000:])
        print(logs_of(layout))
        raise
    _resume_then_status_and_down(state_dir, layout, model_cache, summary)


def _resume_then_status_and_down(state_dir, layout: DevnetLayout, model_cache, summary: dict) -> None:
    """A second `up` resumes the same chain and nodes; `status` and `down` work from other processes,
    and `down` leaves no child alive and the chain saved."""
    common = ["--state-dir", str(state_dir), "--cache-dir", str(model_cache), *MODEL_ARGS]
    up = subprocess.Popen(thinkmesh("devnet", "up", "--nodes", "3", "--cheater", "random-gradient",
                                    "--base-port", str(free_base_port()), *common),
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        state = wait_for(lambda: up.poll() is None and running_state(layout) or (up.poll() is not None and "exited"),
                         300, "the second devnet to run")
        assert state != "exited", up.stdout.read()[-4000:]
        assert state.ledger == summary["ledger"]
        assert [n.address for n in state.nodes] == [n["address"] for n in summary["nodes"]]

        status = subprocess.run(thinkmesh("devnet", "status", "--json", "--state-dir", str(state_dir)),
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout.strip().splitlines()[-1])
        assert report["running"] is True and report["ledger"] == summary["ledger"]
        assert [n["address"] for n in report["chain"]["nodes"]] == [n["address"] for n in summary["nodes"]]
        if state.dashboard_url:
            with urllib.request.urlopen(state.dashboard_url, timeout=10) as page:
                assert page.status == 200

        children = [child.pid for child in DevnetState.load(layout).children]
        down = subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)),
                              env=ENV, capture_output=True, text=True, timeout=150)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert not [pid for pid in children if pid_alive(pid)]
        assert DevnetState.load(layout).phase == "stopped"
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)), env=ENV, capture_output=True,
                       timeout=150)


def _assert_summary_is_the_chain(rpc_url: str, deployment, layout: DevnetLayout, summary: dict) -> None:
    """Each summary figure recomputed from the ledger's events and node records, and the coordinator's
    settlement journal agreeing with both."""
    from thinkmesh.coordinator.settlement.round_settlement import SettlementJournal
    from thinkmesh.protocol.chain.client import LedgerClient
    from thinkmesh.protocol.rules.slashing import SlashReason

    client = LedgerClient.connect(rpc_url, deployment)
    registered = {r.node: r for r in client.events.registrations()}
    nodes = {n["name"]: n for n in summary["nodes"]}
    for name, node in nodes.items():
        address = node["address"]
        record = client.node(address)
        paid = client.events.compensations(node=address)
        slashes = client.events.slashes(node=address)
        assert node["earned"] == sum(c.payout for c in paid), name
        assert node["verified_samples"] == sum(c.verified_samples for c in paid), name
        assert node["slashed"] == sum(s.amount for s in slashes), name
        assert node["claimed"] == sum(c.amount for c in client.events.claims(node=address)), name
        assert node["claimable"] == record.claimable == node["earned"] - node["claimed"], name
        assert node["stake"] == record.stake == registered[address].stake - node["slashed"], name

        if name == CHEATER:
            assert paid == [] and node["earned"] == 0 and node["verified_samples"] == 0
            assert sorted(s.round_id for s in slashes) == list(range(1, ROUNDS + 1)), slashes
            assert {SlashReason(s.reason) for s in slashes} == {SlashReason.GRADIENT_MISMATCH}
            assert node["slashed"] > 0
        else:
            assert slashes == [] and node["slashed"] == 0, (name, slashes)
            assert node["earned"] > 0 and node["verified_samples"] > 0, name

    intents = SettlementJournal(layout.data_dir("coordinator") / "settlement").load()
    assert [(i.round_id, i.done) for i in intents] == [(r, True) for r in range(1, ROUNDS + 1)]
    for intent in intents:
        assert [s.node for s in intent.slashes] == [nodes[CHEATER]["address"]], intent.slashes
        assert {a.node for a in intent.awards} <= {nodes[name]["address"] for name in HONEST}
        on_chain = client.events.compensations(round_id=intent.round_id)
        assert sorted((c.node, c.payout) for c in on_chain) == sorted((a.node, a.payout) for a in intent.awards)


def _assert_dashboard_api_is_the_summary(rpc_url: str, deployment, layout: DevnetLayout, tmp_path, summary: dict) -> None:
    from thinkmesh.protocol.chain.ledger import TOKEN_DECIMALS

    port = free_base_port()
    log = open(tmp_path / "dashboard.log", "wb")
    dashboard = subprocess.Popen(
        thinkmesh("dashboard", "--rpc", rpc_url, "--ledger", deployment.ledger, "--from-block",
                  str(deployment.block_number), "--port", str(port), "--evidence-dir",
                  str(layout.data_dir("coordinator") / "evidence")),
        env=ENV, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/api/"
        rows = {row["address"]: row for row in wait_for(lambda: _get_json(api + "nodes"), 60, "the dashboard's /api/nodes")}
        slashes = _get_json(api + "slashes")
        totals = _get_json(api + "totals")
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=15)
        log.close()

    units = 10**TOKEN_DECIMALS
    assert set(rows) == {n["address"] for n in summary["nodes"]}
    for node in summary["nodes"]:
        row = rows[node["address"]]
        assert row["strategy"] == node["strategy"]
        assert row["verified_samples"] == node["verified_samples"]
        assert (row["earned"], row["slashed"], row["claimable"], row["stake"]) == (
            node["earned"] / units, node["slashed"] / units, node["claimable"] / units, node["stake"] / units,
        ), node["name"]
    cheater = next(n for n in summary["nodes"] if n["name"] == CHEATER)
    assert sorted((s["round_id"], s["node"], s["reason"]) for s in slashes) == [
        (r, cheater["address"], "gradient-mismatch") for r in range(1, ROUNDS + 1)
    ]
    assert totals["rounds_settled"] == ROUNDS and totals["nodes"] == len(summary["nodes"])
    assert totals["slashed"] == cheater["slashed"] / units


def _get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None
