"""The dashboard's evidence links resolve to the cited file, and only to it; unverified identity
bindings are shown as such; serving nodes are shown where a lookup found them, and a failed lookup
leaves them unknown without failing the page. The app runs for real (aiohttp's test server) over a
hand-made ledger snapshot in place of a chain."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account

import thinkmesh.coordinator.dashboard.server as dashboard_module
from thinkmesh.coordinator.dashboard.server import Dashboard
from thinkmesh.coordinator.dashboard.ledger_view import build_summary
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import NodeRegistration, SlashRecord, binding_bytes

from tests.coordinator.test_ledger_view import KEYS, SNAPSHOT, V2, versioned_snapshot

pytestmark = pytest.mark.timeout(60)
C = "0x" + "c" * 40
EVIDENCE = b"evidence bytes of round 2, node C" * 100


def serve(snapshot, evidence_dir, requests, servers=None):
    """Runs the dashboard over `snapshot`; `requests(client)` is awaited with a test client."""

    async def main():
        app = Dashboard(object(), evidence_dir, servers=servers).app()
        async with TestClient(TestServer(app)) as client:
            return await requests(client)

    original = dashboard_module.read_snapshot
    dashboard_module.read_snapshot = lambda client: snapshot
    try:
        return asyncio.run(main())
    finally:
        dashboard_module.read_snapshot = original


def cited(digest: bytes):
    slash = dataclasses.replace(SNAPSHOT.slashes[0], evidence_hash=digest)  # round 2, node C
    return dataclasses.replace(SNAPSHOT, slashes=(slash,))


@pytest.fixture
def evidence_dir(tmp_path):
    directory = tmp_path / "evidence" / "round-000002"
    directory.mkdir(parents=True)
    (directory / f"{KEYS[C].public_key.hex()}.evidence").write_bytes(EVIDENCE)
    return tmp_path / "evidence"


def test_a_cited_evidence_file_is_served_by_its_hash(evidence_dir):
    name = "0x" + keccak256(EVIDENCE).hex()

    async def requests(client):
        response = await client.get(f"/evidence/{name.upper().replace('0X', '0x')}")
        body = await response.read()
        posted = await client.post(f"/evidence/{name}")
        return response.status, body, response.headers, posted.status

    status, body, headers, posted = serve(cited(keccak256(EVIDENCE)), evidence_dir, requests)
    assert status == 200 and body == EVIDENCE
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == f'attachment; filename="{name}.evidence"'
    assert posted == 405  # read-only


def test_a_contribution_named_file_is_found_when_the_node_key_link_is_missing(evidence_dir):
    round_dir = evidence_dir / "round-000002"
    (round_dir / f"{KEYS[C].public_key.hex()}.evidence").unlink()
    (round_dir / ("ab" * 32 + ".evidence")).write_bytes(EVIDENCE)
    (round_dir / ("cd" * 32 + ".evidence")).write_bytes(b"another verdict")

    async def requests(client):
        response = await client.get(f"/evidence/0x{keccak256(EVIDENCE).hex()}")
        return response.status, await response.read()

    assert serve(cited(keccak256(EVIDENCE)), evidence_dir, requests) == (200, EVIDENCE)


def test_only_cited_hashes_of_files_inside_the_directory_are_served(evidence_dir, tmp_path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"not evidence")
    round_dir = evidence_dir / "round-000002"
    tampered = b"tampered " + EVIDENCE

    async def requests(client):
        answers = {}
        for label, path in {
            "malformed": "/evidence/..%2F..%2Fsecret", "short": "/evidence/0x1234",
            "uncited": f"/evidence/0x{keccak256(b'nothing').hex()}",
            "tampered": f"/evidence/0x{keccak256(tampered).hex()}",
            "escape": f"/evidence/0x{keccak256(b'not evidence').hex()}",
        }.items():
            response = await client.get(path)
            answers[label] = (response.status, await response.text())
        return answers

    # The chain cites the tampered file's original hash and the outside file's: neither may be served.
    os.symlink(outside, round_dir / ("ee" * 32 + ".evidence"))
    snapshot = dataclasses.replace(SNAPSHOT, slashes=(
        dataclasses.replace(SNAPSHOT.slashes[0], evidence_hash=keccak256(tampered)),
        dataclasses.replace(SNAPSHOT.slashes[0], evidence_hash=keccak256(b"not evidence")),
    ))
    answers = serve(snapshot, evidence_dir, requests)
    assert answers["malformed"][0] == 400 and answers["short"][0] == 400
    assert answers["uncited"] == (404, f"no slash on the ledger cites evidence 0x{keccak256(b'nothing').hex()}")
    assert answers["tampered"][0] == 404 and "none there does" in answers["tampered"][1]
    assert answers["escape"][0] == 404


def test_without_an_evidence_dir_the_link_says_why(tmp_path):
    async def requests(client):
        response = await client.get(f"/evidence/0x{keccak256(EVIDENCE).hex()}")
        return response.status, await response.text()

    assert serve(cited(keccak256(EVIDENCE)), None, requests) == (404, "this dashboard was started without --evidence-dir")


# ---------------------------------------------------------------- identity bindings


def registration(account, identity: NodeIdentity, block: int, *, forged: bool = False) -> NodeRegistration:
    binding = binding_bytes(bind_identity(identity, bytes(account.key)))
    if forged:  # a copy of someone else's key: the Ed25519 signature cannot be made, so it does not verify
        binding = bytes(64) + binding[64:]
    return NodeRegistration(account.address, identity.public_key, identity.peer_id.encode(), binding, 1, "grpo", "",
                            block, b"\x00" * 32)


def test_unverified_identity_bindings_are_shown_as_such():
    owner, squatter, copier = (Account.from_key(bytes([n]) * 32) for n in (7, 8, 9))
    key, other = NodeIdentity.from_seed(b"\x21" * 32), NodeIdentity.from_seed(b"\x22" * 32)
    registrations = (registration(owner, key, 5), registration(squatter, key, 6, forged=True),
                     registration(copier, other, 7, forged=True))
    nodes = tuple(dataclasses.replace(SNAPSHOT.nodes[0], address=a.address, ed25519_key=r.ed25519_key)
                  for a, r in zip((owner, squatter, copier), registrations, strict=True))
    snapshot = dataclasses.replace(SNAPSHOT, nodes=nodes, registrations=registrations, slashes=(), compensations=(),
                                   claims=())
    rows = {row.address: row for row in build_summary(snapshot).nodes}
    assert rows[owner.address].identity == "verified" and rows[owner.address].identity_note == ""
    for who in (squatter, copier):
        assert rows[who.address].identity == "unverified"
        assert "do not verify" in rows[who.address].identity_note

    async def requests(client):
        response = await client.get("/api/nodes")
        return await response.json()

    served = {row["address"]: row["identity"] for row in serve(snapshot, None, requests)}
    assert served == {owner.address: "verified", squatter.address: "unverified", copier.address: "unverified"}


def test_a_second_valid_binding_of_a_key_is_unverified_naming_the_first():
    first, second = Account.from_key(b"\x07" * 32), Account.from_key(b"\x08" * 32)
    key = NodeIdentity.from_seed(b"\x21" * 32)  # its owner signed for two accounts: the earlier one is paid
    registrations = (registration(first, key, 5), registration(second, key, 9))
    nodes = tuple(dataclasses.replace(SNAPSHOT.nodes[0], address=a.address) for a in (first, second))
    rows = {row.address: row for row in build_summary(dataclasses.replace(
        SNAPSHOT, nodes=nodes, registrations=registrations, slashes=(), compensations=(), claims=())).nodes}
    assert rows[first.address].identity == "verified"
    assert rows[second.address].identity == "unverified" and first.address in rows[second.address].identity_note


def test_a_snapshot_without_registrations_says_identity_unknown():
    assert {row.identity for row in build_summary(SNAPSHOT).nodes} == {"unknown"}
    assert isinstance(SNAPSHOT.slashes[0], SlashRecord)


# ---------------------------------------------------------------- serving nodes


class FakeLookup:
    """Stands in for `ServerLookup`: answers from a table, or fails like an unreachable DHT."""

    description = "signed records found in the DHT"

    def __init__(self, found=None, error=None):
        self.found, self.error, self.asked = found, error, []

    async def find(self, model_hashes):
        self.asked.append(sorted(set(model_hashes)))
        if self.error is not None:
            raise self.error
        return self.found


def versions_served(lookup):
    async def requests(client):
        response = await client.get("/api/summary")
        return response.status, await response.json()

    return serve(versioned_snapshot(), None, requests, servers=lookup)


def test_serving_nodes_come_from_the_lookup_for_the_chains_versions():
    from thinkmesh.protocol.rules.receipts import ServerAnnouncement

    record = ServerAnnouncement(b"\x07" * 32, V2, "http://10.0.0.7:8000", 1_900_000_000_000)
    lookup = FakeLookup({V2: [record]})
    status, summary = versions_served(lookup)
    assert status == 200 and summary["serving"] == FakeLookup.description
    assert lookup.asked == [sorted({bytes.fromhex(v["model_hash"][2:]) for v in summary["versions"]})]
    served = {v["model_hash"]: v["servers"] for v in summary["versions"] if v["base_model_hash"] is None}
    assert served["0x" + V2.hex()] == [{"server_key": "0x" + "07" * 32, "url": record.url,
                                        "expires_ms": record.expires_ms}]


def test_a_failed_lookup_leaves_serving_nodes_unknown_and_the_page_up():
    status, summary = versions_served(FakeLookup(error=TimeoutError()))
    assert status == 200 and summary["rounds"]  # the chain's figures are there
    assert summary["serving"] == "unknown: the DHT lookup failed (TimeoutError)"
    assert all(v["servers"] is None for v in summary["versions"])


def test_a_lookup_that_keeps_failing_is_logged_a_few_times_not_at_every_refresh(caplog):
    import asyncio
    import logging

    from thinkmesh.coordinator.dashboard.server import Dashboard

    lookup = FakeLookup(error=TimeoutError())
    dashboard = Dashboard(object(), servers=lookup)
    with caplog.at_level(logging.WARNING, logger=dashboard_module.__name__):
        for _ in range(10):
            assert asyncio.run(dashboard._find_servers(versioned_snapshot()))[0] is None
    assert len(lookup.asked) == 10
    assert len([r for r in caplog.records if "serving nodes" in r.getMessage()]) == 2


def test_while_the_dht_join_is_under_way_serving_nodes_are_unknown_and_nothing_is_logged(caplog):
    import asyncio
    import logging

    from thinkmesh.coordinator.dashboard.server import Dashboard
    from thinkmesh.coordinator.dashboard.server_lookup import JoiningLookup

    dashboard = Dashboard(object(), servers=JoiningLookup())
    with caplog.at_level(logging.WARNING):
        found, serving = asyncio.run(dashboard._find_servers(versioned_snapshot()))
    assert found is None and serving == "unknown: still joining the DHT" and not caplog.records


def test_a_dht_that_does_not_start_leaves_the_page_up_saying_why(monkeypatch):
    from thinkmesh.coordinator.dashboard import server_lookup

    def no_p2pd(peers):
        raise FileNotFoundError("no p2pd binary")

    monkeypatch.setattr(server_lookup.ServerLookup, "start", staticmethod(no_p2pd))
    lookup = server_lookup.start_or_report(["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWExample"])
    status, summary = versions_served(lookup)
    assert status == 200 and summary["rounds"]
    assert summary["serving"] == ("unknown: the DHT lookup failed (RuntimeError: the DHT did not start: "
                                  "FileNotFoundError: no p2pd binary)")
    assert all(v["servers"] is None for v in summary["versions"])


def test_the_page_answers_while_the_dht_join_is_under_way_and_the_lookup_is_shut_down_after(monkeypatch):
    """Joining the DHT takes seconds; the page must not refuse connections meanwhile (the devnet
    reports the dashboard's URL as soon as it starts it), and a lookup that finishes joining only
    after the stop is still shut down, so its p2pd does not outlive the dashboard."""
    import socket
    import threading
    import types
    import urllib.request

    from thinkmesh.coordinator.dashboard.server import serve_dashboard

    monkeypatch.setattr(dashboard_module, "read_snapshot", lambda client: SNAPSHOT)
    release, shut = threading.Event(), threading.Event()

    class Lookup:
        description = "fake"

        async def find(self, model_hashes):
            return {}

        def shutdown(self):
            shut.set()

    def join():
        release.wait(30)
        return Lookup()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = types.SimpleNamespace(deployment=types.SimpleNamespace(ledger="0x" + "1" * 40))

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(serve_dashboard(client, "127.0.0.1", port, None, stop, join))
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/summary", timeout=5).read())
                break
            except OSError:
                continue
        else:
            raise AssertionError("the page never answered while the DHT join was under way")
        assert b"still joining the DHT" in body
        stop.set()
        release.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())
    assert shut.is_set()
