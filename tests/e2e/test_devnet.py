"""`thinkmesh devnet` refusing clearly: a port in use, no npm toolchain, no devnet to show or stop;
and the helpers the full run (tests/e2e/test_devnet_cheater.py: up with a cheater, resume,
status, down) shares. The micro model profile with a short cold start is built once per session
in a shared cache directory, as a user's second `up` would find it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from thinkmesh.devnet.layout import DevnetLayout, DevnetState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COLDSTART_EXAMPLES = "128"
MODEL_ARGS = ["--model", "micro", "--coldstart-examples", COLDSTART_EXAMPLES]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def thinkmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "thinkmesh.protocol.cli.main", *args]


def free_base_port() -> int:
    """A port P with P..P+3 free (the devnet's fixed ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        try:
            for offset in range(4):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise AssertionError("no four consecutive free ports")



def running_state(layout: DevnetLayout) -> DevnetState | None:
    try:
        state = DevnetState.load(layout)
    except Exception:
        return None
    return state if state.phase == "running" else None


def logs_of(layout: DevnetLayout) -> str:
    parts = []
    for log in sorted((layout.root / "logs").glob("*.log")):
        parts.append(f"===== {log.name} =====\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


@pytest.mark.timeout(120)
def test_up_names_the_port_in_use(tmp_path, model_cache):
    base = free_base_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))
        squatter.listen()
        result = subprocess.run(thinkmesh("devnet", "up", "--state-dir", str(tmp_path / "d"), "--base-port", str(base),
                                          "--cache-dir", str(model_cache), *MODEL_ARGS),
                                env=ENV, capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    assert f"port(s) in use: coordinator p2p 127.0.0.1:{base + 2}" in result.stderr
    assert "--base-port" in result.stderr


@pytest.mark.timeout(120)
def test_up_without_the_npm_toolchain_says_run_make_install(tmp_path):
    env = dict(ENV, THINKMESH_ANVIL=str(tmp_path / "no-anvil-here"))
    result = subprocess.run(thinkmesh("devnet", "up", "--state-dir", str(tmp_path / "d")), env=env,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    assert "the npm toolchain is missing" in result.stderr and "make install" in result.stderr


@pytest.mark.timeout(60)
def test_status_and_down_without_a_devnet_say_how_to_start_one(tmp_path):
    for command in ("status", "down"):
        result = subprocess.run(thinkmesh("devnet", command, "--state-dir", str(tmp_path / "none")), env=ENV,
                                capture_output=True, text=True, timeout=50)
        assert result.returncode == 1
        assert "thinkmesh devnet up" in result.stderr
