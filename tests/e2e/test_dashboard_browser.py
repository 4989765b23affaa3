"""The dashboard in a real browser, against a real anvil holding a real ledger history.

The history is made through the chain client exactly as a coordinator makes it (register, open,
settle with round metrics and details, slash): two training rounds with strategy values, then a
generation round paid per accepted trace. A server's signed record for the generation round's
model lies in a real DHT (p2pd), which the dashboard (`thinkmesh dashboard --find-servers`, the
command a user runs) looks up. Debian's headless Chromium loads the page, driven by Playwright
(`executable_path`: Playwright's own browser download is impossible offline, and never needed).
Saves a screenshot to tests/e2e/artifacts/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thinkmesh.devnet.anvil import Anvil, AnvilError, find_anvil_binary
from thinkmesh.devnet.ports import free_port, port_open
from thinkmesh.devnet.processes import wait_for
from thinkmesh.protocol.chain.client import LedgerClient, deploy
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import Award, RoundStats, seed_commitment, tokens
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.chain.round_details import RoundDetails, strategy_values

ARTIFACTS = Path(__file__).with_name("artifacts")
STRATEGIES = ("dapo", "grpo", "gspo")
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make install-test installs it)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _require_tools() -> None:
    missing = []
    try:
        find_anvil_binary()
    except AnvilError:
        missing.append("anvil (make install)")
    if not CHROMIUM.exists():
        missing.append("chromium (make install-test)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (make install-test)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing on CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")


def _make_history(anvil: Anvil) -> tuple[LedgerClient, list[str]]:
    admin = anvil.accounts[0]
    deployment = deploy(anvil.rpc_url, admin.private_key, unbonding_delay_s=60, min_stake=tokens(10))
    coordinator = LedgerClient.connect(anvil.rpc_url, deployment, private_key=admin.private_key)
    coordinator.mint(admin.address, tokens(1_000))
    coordinator.fund(tokens(1_000))
    nodes = []
    for i, strategy in enumerate(STRATEGIES, start=1):
        account = anvil.accounts[i]
        coordinator.mint(account.address, tokens(100))
        node = LedgerClient.connect(anvil.rpc_url, deployment, private_key=account.private_key)
        binding = bind_identity(NodeIdentity.from_seed(bytes([i]) * 32), bytes.fromhex(account.private_key[2:]))
        node.register(binding, tokens(50), strategy, "")
        nodes.append(node)
    addresses = [n.address for n in nodes]
    for round_id, accuracy in ((1, 0.20), (2, 0.35), (3, 0.45)):
        seed = bytes([round_id]) * 32
        coordinator.open_round(round_id, model_of(round_id), seed_commitment(seed))
        paid = addresses[:2]  # the third node cheats every round and is never paid
        if round_id in VALUES:  # training: per prompt, and each strategy's contribution value
            awards = [Award(a, 16, 900_000, tokens(5)) for a in paid]
            details = RoundDetails("training", reward_rate=tokens("0.08"), values=strategy_values(VALUES[round_id]))
        else:  # generation: per accepted trace
            awards = [Award(a, traces, 1_000_000, traces * tokens("0.25")) for a, traces in zip(paid, TRACES)]
            details = RoundDetails("generation", reward_rate=tokens("0.25"))
        stats = RoundStats.of(accepted=2, rejected=1, mean_reward=0.5 + 0.1 * round_id, held_out_accuracy=accuracy)
        coordinator.settle_round(round_id, seed, bytes([round_id]) * 32, awards, stats, details)
        coordinator.slash(round_id, addresses[2], tokens(5), SlashReason.REWARD_MISMATCH, bytes([0xEE]) * 32)
    nodes[0].claim()
    return coordinator, addresses


VALUES = {1: [("dapo", 0.02), ("grpo", -0.01)], 2: [("dapo", 0.04), ("grpo", 0.01)]}  # (strategy, value) per round
TRACES = (5, 3)  # accepted traces of the two honest nodes in the generation round (round 3)
SERVED_URL = "http://127.0.0.1:9/v1"  # what the server's record claims; the dashboard only shows it


def model_of(round_id: int) -> bytes:
    return bytes([0xA0 + round_id]) * 32


def _announce_server(model_hash: bytes):
    """A DHT (real p2pd) holding one server's signed record for `model_hash`; returns the DHT."""
    import asyncio

    from thinkmesh.protocol.p2p.serve_records import ServerAnnouncer, start_dht

    identity = NodeIdentity.from_seed(b"\x5e" * 32)
    dht = start_dht([model_hash], identity=identity)
    assert asyncio.run(ServerAnnouncer(dht, identity, model_hash, SERVED_URL, 300).announce_once())
    return dht


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_dashboard_shows_every_node_and_a_reward_curve_without_console_errors(tmp_path):
    _require_tools()
    with Anvil(accounts=5) as anvil:
        coordinator, addresses = _make_history(anvil)
        server_dht = _announce_server(model_of(3))
        port = free_port()
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "thinkmesh.protocol.cli.main", "dashboard", "--rpc", anvil.rpc_url,
             "--ledger", coordinator.deployment.ledger, "--port", str(port), "--find-servers",
             "--initial-peers", *(str(m) for m in server_dht.get_visible_maddrs())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_for(lambda: port_open(port) or dashboard.poll() is not None, 60, "the dashboard to listen")
            assert dashboard.poll() is None, dashboard.stdout.read()
            ARTIFACTS.mkdir(exist_ok=True)
            _check_page(f"http://127.0.0.1:{port}/", addresses)
        finally:
            dashboard.terminate()
            dashboard.wait(timeout=15)
            server_dht.shutdown()


def _check_page(url: str, addresses: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    console_errors: list[str] = []
    with sync_playwright() as playwright:  # leaving it stops the driver and the browser, on failure too
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(45_000)
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
        page.goto(url, wait_until="load")
        # a leaderboard row per registered node, then the reward chart drawn
        page.wait_for_function(f"document.querySelectorAll('#leaderboard tbody tr').length === {len(addresses)}")
        page.wait_for_function(
            "(() => { const c = Chart.getChart('reward-chart'); return c && c.data.datasets[0].data.length === 3; })()"
        )
        points = page.evaluate("Chart.getChart('reward-chart').data.datasets[0].data")
        assert points == pytest.approx([0.20, 0.35, 0.45])
        # The curve in words from the same figures, and what it cannot show said next to it
        labels = page.evaluate("Chart.getChart('reward-chart').data.labels")
        summary = page.evaluate("document.getElementById('heldout-summary').innerText")
        assert summary == f"Held-out accuracy: first 20.0% ({labels[0]}), best 45.0% ({labels[2]}), last 45.0% ({labels[2]})."
        note = page.evaluate("document.getElementById('heldout-note').innerText")
        assert "slip planted in its cold start" in note and "bench/scaling.py" in note
        # Strategies by their values on chain, pooled over rounds 1-2: mean and 95% interval each
        chart = page.evaluate("(() => { const c = Chart.getChart('strategy-chart'); "
                              "return {labels: c.data.labels, intervals: c.data.datasets[0].data, "
                              "means: c.data.datasets[1].data}; })()")
        assert chart["labels"] == ["dapo", "grpo"]
        assert chart["means"] == pytest.approx([0.03, 0.0])
        half = 1.96 * (0.02 / 2 ** 0.5) / 2 ** 0.5  # two values 0.02 apart: sd 0.02/sqrt(2), n = 2
        assert chart["intervals"] == [pytest.approx([0.03 - half, 0.03 + half]), pytest.approx([-half, half])]
        # The generation round beside the training rounds, with its accepted traces and per-trace pay
        rounds = page.evaluate("[...document.querySelectorAll('#rounds tbody tr')].map((tr) => "
                               "[...tr.children].map((td) => td.innerText))")
        by_round = {row[0]: row for row in rounds}
        assert by_round["3"][1] == "generation" and by_round["1"][1] == by_round["2"][1] == "training"
        assert by_round["3"][6] == str(sum(TRACES)) and by_round["3"][7] == "0.25 MESH / trace"
        assert by_round["1"][7] == "0.08 MESH / prompt"
        # Versions with their accepted traces, and the serving node the DHT knows of
        page.wait_for_function(f"document.querySelector('#versions').innerText.includes('{SERVED_URL}')")
        versions = page.evaluate("[...document.querySelectorAll('#versions tbody tr')].map((tr) => "
                                 "[...tr.children].map((td) => td.innerText))")
        assert [row[4] for row in versions] == ["32", "32", str(sum(TRACES))]
        assert [row[5] for row in versions] == ["none found", "none found", SERVED_URL]
        slashed = page.evaluate("document.querySelectorAll('#slashes tbody tr').length")
        assert slashed == 3
        text = page.evaluate("document.querySelector('#leaderboard').innerText")
        assert "dapo" in text and "gspo" in text
        page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
    assert console_errors == []
