"""`WatchedDHT` on real hivemind DHT processes and real p2pd daemons: a SIGKILL to either is
noticed at once, a call waiting on the dead DHT fails instead of hanging, both come back with the
same PeerID and address, and restarts past the budget end in a clear error. The identity reaches
p2pd without touching a file system, and neither child inherits the key password."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

from thinkmesh.protocol.p2p.dht_process import P2PProcessDied, P2PRestartFailed, WatchedDHT, p2p_identity_file
from thinkmesh.protocol.rules.identity import NodeIdentity

IDENTITY = NodeIdentity.from_seed(b"\x21" * 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_dht(port: int):
    def make(identity_path: str):
        import hivemind

        return hivemind.DHT(start=False, host_maddrs=[f"/ip4/127.0.0.1/tcp/{port}"], identity_path=identity_path,
                            check_if_identity_free=False)
    return make


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        entries = handle.read().split(b"\0")
    return dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)


def test_the_identity_reaches_another_process_through_memory_only():
    with p2p_identity_file(IDENTITY) as path:
        assert path.startswith(f"/proc/{os.getpid()}/fd/")
        assert "memfd:" in os.readlink(path)
        assert os.path.isfile(path)  # hivemind checks this before handing the path to p2pd
        with open(path, "rb") as handle:
            assert handle.read() == IDENTITY.libp2p_private_key_bytes()
    assert not os.path.exists(path)


@pytest.mark.timeout(120)
def test_a_killed_dht_process_or_p2pd_is_restarted_with_the_same_identity_and_address(monkeypatch):
    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", "must-not-leak")
    port = free_port()
    restarted: list[tuple[int, int]] = []

    async def scenario():
        watch = WatchedDHT(make_dht(port), IDENTITY, role="test")

        async def on_restart():
            restarted.append((watch.dht.pid, watch.status()["p2pd_pid"]))

        watch.on_restart = on_restart
        await watch.start()
        try:
            first = watch.status()
            for pid in (first["dht_pid"], first["p2pd_pid"]):
                assert "THINKMESH_KEY_PASSWORD" not in environ_of(pid)
            assert await watch.call(lambda dht: dht.store("k", b"v", time.time() + 60, return_future=True))
            assert str(watch.p2p.peer_id) == IDENTITY.peer_id

            # A request stuck on a DHT process that dies fails at once instead of waiting forever.
            stuck = asyncio.ensure_future(watch.call(lambda dht: dht.run_coroutine(_forever, return_future=True)))
            await asyncio.sleep(0.2)
            os.kill(first["dht_pid"], signal.SIGKILL)
            with pytest.raises(P2PProcessDied, match="SIGKILL"):
                await asyncio.wait_for(stuck, 10)
            found = await asyncio.wait_for(watch.call(lambda dht: dht.get("missing", return_future=True)), 30)
            assert found is None and watch.restarts == 1 and len(restarted) == 1
            second = watch.status()
            assert second["dht_pid"] != first["dht_pid"] and second["p2pd_pid"] != first["p2pd_pid"]
            assert not _alive(first["p2pd_pid"])  # the orphaned p2pd was ended, freeing the port
            assert any(f"/tcp/{port}/" in str(m) for m in watch.dht.get_visible_maddrs())
            assert str(watch.p2p.peer_id) == IDENTITY.peer_id

            os.kill(second["p2pd_pid"], signal.SIGKILL)  # p2pd alone this time
            await asyncio.wait_for(_until(lambda: watch.restarts == 2), 30)
            assert "p2pd" in watch.last_cause
            assert await watch.call(lambda dht: dht.store("k", b"v2", time.time() + 60, return_future=True))
            assert not _alive(second["dht_pid"])
        finally:
            last = watch.status()
            await watch.shutdown()
        assert not _alive(last["dht_pid"]) and not _alive(last["p2pd_pid"])

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_past_its_restart_budget_the_role_is_cancelled_with_the_cause():
    port = free_port()

    async def role():
        watch = WatchedDHT(make_dht(port), IDENTITY, role="node", max_restarts=1)
        try:
            await watch.start()
            os.kill(watch.status()["dht_pid"], signal.SIGKILL)
            await _until(lambda: watch.restarts == 1)
            os.kill(watch.status()["dht_pid"], signal.SIGKILL)
            await asyncio.sleep(60)  # the failed restart cancels this task
        except asyncio.CancelledError:
            watch.raise_if_failed()
            raise
        finally:
            await watch.shutdown()

    with pytest.raises(P2PRestartFailed, match=r"node: the hivemind DHT process \(pid \d+\) was killed by SIGKILL, "
                                               r"after 1 restarts within 600s; exiting so that a supervisor"):
        asyncio.run(role())


async def _forever(_dht, _node):
    await asyncio.sleep(3600)


async def _until(predicate, step_s: float = 0.05) -> None:
    while not predicate():
        await asyncio.sleep(step_s)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_a_role_that_is_stopping_does_not_restart_what_its_process_group_signal_ended():
    """`devnet down` sends SIGTERM to the role's whole process group: p2pd exits with the role."""
    port = free_port()

    async def scenario():
        stop = asyncio.Event()
        watch = WatchedDHT(make_dht(port), IDENTITY, role="node", stop=stop)
        await watch.start()
        first = watch.status()
        stop.set()
        os.kill(first["p2pd_pid"], signal.SIGTERM)
        with pytest.raises(P2PProcessDied):
            await asyncio.wait_for(watch.call(lambda dht: dht.run_coroutine(_forever, return_future=True)), 10)
        assert watch.restarts == 0 and watch.status()["dht_pid"] == first["dht_pid"]
        await watch.shutdown()
        assert not _alive(first["dht_pid"]) and not _alive(first["p2pd_pid"])

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_restart_that_keeps_failing_ends_the_role_with_the_last_error(monkeypatch):
    from thinkmesh.protocol.p2p import dht_process
    
    monkeypatch.setattr(dht_process, "RESTART_GIVE_UP_S", 2.5)
    port = free_port()
    calls = []

    def make(identity_path: str):
        calls.append(identity_path)
        if len(calls) > 1:
            raise RuntimeError("p2pd: address already in use")
        return make_dht(port)(identity_path)

    async def role():
        watch = WatchedDHT(make, IDENTITY, role="coordinator")
        try:
            await watch.start()
            os.kill(watch.status()["dht_pid"], signal.SIGKILL)
            await asyncio.sleep(60)  # cancelled by the failed restart
        except asyncio.CancelledError:
            watch.raise_if_failed()
            raise
        finally:
            await watch.shutdown()

    with pytest.raises(P2PRestartFailed, match=r"coordinator: the hivemind DHT process \(pid \d+\) was killed by "
                                               r"SIGKILL, and restarting it failed for 2s \(last: p2pd: address "
                                               r"already in use\); exiting so that a supervisor restarts"):
        asyncio.run(role())
    assert len(calls) >= 3  # tried again, with a backoff, before giving up
