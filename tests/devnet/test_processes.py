"""The devnet's children: a role that dies is said and restarted a few times, then given up on;
children never inherit a secret; nodes added by `devnet join` are stopped with all they started."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from thinkmesh.devnet import processes
from thinkmesh.devnet.control import record_joined, stop_joined_nodes
from thinkmesh.devnet.layout import DevnetLayout
from thinkmesh.devnet.processes import DevnetError, ManagedProcess, ProcessGroup, alive, descendants


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_dead(process: ManagedProcess, timeout_s: float = 20.0) -> None:
    process.popen.wait(timeout=timeout_s)


@pytest.mark.timeout(60)
def test_a_role_that_dies_is_said_and_restarted_until_its_budget_is_spent(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "MAX_RESTARTS", 2)
    group = ProcessGroup()
    dying = group.start(ManagedProcess("node-1", python("print('thinkmesh: error: p2pd died'); raise SystemExit(1)"),
                                       tmp_path / "node-1.log"))
    said: list[str] = []
    for restart in (1, 2):
        wait_dead(dying)
        assert group.revive(lambda name: True, said.append) == [dying]
        assert said[-1] == (f"node-1 exited with code 1 (thinkmesh: error: p2pd died); restarting it "
                            f"(restart {restart} of at most 2 within 600s)")
    wait_dead(dying)
    with pytest.raises(DevnetError, match=r"node-1 exited with code 1 \(thinkmesh: error: p2pd died\), after 2 "
                                          r"restarts within 600s; the end of .*node-1.log"):
        group.revive(lambda name: True, said.append)
    assert (tmp_path / "node-1.log").read_text().count("p2pd died") == 3  # one log, appended


@pytest.mark.timeout(60)
def test_a_child_whose_role_is_not_restartable_ends_the_devnet(tmp_path):
    group = ProcessGroup()
    anvil = group.start(ManagedProcess("anvil", python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                                       tmp_path / "anvil.log"))
    wait_dead(anvil)
    with pytest.raises(DevnetError, match="anvil was killed by SIGKILL; the end of"):
        group.revive(lambda name: name != "anvil", lambda line: None)


@pytest.mark.timeout(60)
def test_children_get_no_secret_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", "hunter2")
    monkeypatch.setenv("THINKMESH_NODE__CHAIN__PRIVATE_KEY", "0xabc")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    child = ManagedProcess("node-1", python("import os; print(sorted(os.environ))"), tmp_path / "env.log",
                           env={"OMP_NUM_THREADS": "1"})
    child.start()
    wait_dead(child)
    names = (tmp_path / "env.log").read_text()
    assert "THINKMESH_KEY_PASSWORD" not in names and "PRIVATE_KEY" not in names and "HF_TOKEN" not in names
    assert "TOKENIZERS_PARALLELISM" in names and "OMP_NUM_THREADS" in names and "'PATH'" in names


# A stand-in for a node: it ignores SIGTERM for a while (a slow shutdown) and has a child of its
# own that outlives it, as a DHT process or p2pd can.
STUBBORN_NODE = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: None)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_down_stops_the_nodes_that_join_started_and_everything_below_them(tmp_path):
    layout = DevnetLayout(tmp_path / "devnet")
    node = subprocess.Popen(python(STUBBORN_NODE), stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout.readline().strip() == "ready"
        below = descendants(node.pid)
        assert len(below) == 1
        record_joined(layout, "guest", node.pid)
        assert stop_joined_nodes(layout, grace_s=0.5) == ["guest"]
        node.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(below) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(below) == []
        assert list((layout.root / "joined").iterdir()) == []
    finally:
        if node.poll() is None:
            node.kill()


@pytest.mark.timeout(60)
def test_a_joined_record_whose_pid_now_names_another_process_is_left_alone(tmp_path):
    layout = DevnetLayout(tmp_path / "devnet")
    other = subprocess.Popen(python("import time; time.sleep(60)"))
    try:
        path = record_joined(layout, "guest", other.pid)
        record = path.read_text().replace('"started": ', '"started": 1')  # as if the pid were reused since
        path.write_text(record)
        assert stop_joined_nodes(layout, grace_s=0.5) == []
        assert other.poll() is None and not path.exists()
    finally:
        other.kill()
        other.wait()


def test_secret_variables_are_told_from_ordinary_ones():
    from thinkmesh.protocol.runtime.process_lifecycle import is_secret_variable

    for name in ("THINKMESH_KEY_PASSWORD", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "THINKMESH_NODE__CHAIN__PRIVATE_KEY",
                 "OPENAI_API_KEY", "WALLET_MNEMONIC"):
        assert is_secret_variable(name), name
    for name in ("PATH", "TOKENIZERS_PARALLELISM", "THINKMESH_LOCK_DIR", "OMP_NUM_THREADS", "KEY_DIR", "HOME"):
        assert not is_secret_variable(name), name


@pytest.mark.timeout(60)
def test_a_forked_child_does_not_inherit_the_key_password(monkeypatch):
    """hivemind forks its DHT process, which starts p2pd with a copy of its environment."""
    import multiprocessing

    from thinkmesh.protocol.runtime.process_lifecycle import install_child_hooks

    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", "hunter2")
    install_child_hooks()
    reader, writer = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_report_environment, args=(writer,))
    child.start()
    seen = reader.recv()
    child.join(timeout=20)
    assert "THINKMESH_KEY_PASSWORD" not in seen["python"] and "THINKMESH_KEY_PASSWORD" not in seen["exec"]
    assert os.environ["THINKMESH_KEY_PASSWORD"] == "hunter2"  # the parent keeps what it needs


def _report_environment(writer) -> None:
    exec_env = subprocess.run(["env"], capture_output=True, text=True).stdout  # what an exec'd p2pd would get
    writer.send({"python": dict(os.environ), "exec": exec_env})
