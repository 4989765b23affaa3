"""`thinkmesh node doctor`: what a node needs, checked one thing at a time, each with its fix.

Every check returns `Check` records and never raises for a broken environment: a doctor that
crashes on the first missing part would hide the others. Checks that need an earlier one (the
registration needs the RPC and the keystore) are skipped, not failed, when it failed.
The chain-side checks (RPC, bootstrap peers, keystore, registration) are in `doctor_chain.py`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MIN_PYTHON = (3, 11)
P2PD_TIMEOUT_S = 15.0
DISK_HEADROOM_BYTES = 1 << 30
GiB = float(1 << 30)


@dataclass(frozen=True)
class Check:
    verdict: str  # PASS, FAIL or SKIP
    name: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.failed and self.fix else ""
        return f"{self.verdict} {self.name}: {self.detail}{fix}"


def passed(name: str, detail: str) -> Check:
    return Check(PASS, name, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(FAIL, name, detail, fix)


def skipped(name: str, detail: str) -> Check:
    return Check(SKIP, name, detail)


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return failed("python", f"{version} at {sys.executable}", f"use Python {wanted} or newer")
    return passed("python", f"{version} at {sys.executable}")


def check_torch() -> Check:
    try:
        import torch
    except Exception as exc:  # a broken install raises more than ImportError
        return failed("torch", f"does not import: {type(exc).__name__}: {exc}",
                      "pip install 'torch>=2.4' (a CUDA build on GPU machines)")
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU-only build"
    return passed("torch", f"{torch.__version__}{cuda}")


def check_device(device: str, model_bytes: int) -> Check:
    """The configured device exists; on CUDA, its free memory holds ~3x the model (weights, grads, work)."""
    if not device.startswith("cuda"):
        return passed("device", f"{device} (no CUDA needed)")
    try:
        import torch
    except Exception:
        return skipped("device", "torch does not import")
    if not torch.cuda.is_available():
        return failed("device", f"{device} configured, but torch sees no CUDA device",
                      "install a CUDA build of torch and the NVIDIA driver, or set device = \"cpu\"")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        return failed("device", f"{device} configured, but only {torch.cuda.device_count()} CUDA device(s) exist",
                      f"set device = \"cuda:{torch.cuda.device_count() - 1}\" or lower")
    free, total = torch.cuda.mem_get_info(index)
    detail = f"{torch.cuda.get_device_name(index)}: {free / GiB:.1f} of {total / GiB:.1f} GiB free"
    if free < 3 * model_bytes:
        return failed("device", f"{detail}; the model needs about {3 * model_bytes / GiB:.1f} GiB",
                      "free GPU memory (other processes: nvidia-smi) or use a smaller base model")
    return passed("device", detail)


def bundled_p2pd() -> Path:
    from importlib.resources import files

    return Path(str(files("hivemind.hivemind_cli") / "p2pd"))


def check_p2pd(path: Path | None = None, timeout_s: float = P2PD_TIMEOUT_S) -> Check:
    """Starts the libp2p daemon on a loopback port and waits for its "Peer ID:" line."""
    path = path or bundled_p2pd()
    fix = "reinstall hivemind (pip install --force-reinstall hivemind==1.1.12), whose wheel ships p2pd"
    if not path.is_file():
        return failed("p2pd", f"no binary at {path}", fix)
    try:
        return asyncio.run(_start_p2pd(path, timeout_s, fix))
    except OSError as exc:
        return failed("p2pd", f"{path} does not execute: {exc}", fix)


async def _start_p2pd(path: Path, timeout_s: float, fix: str) -> Check:
    with tempfile.TemporaryDirectory(prefix="thinkmesh-doctor-") as scratch:
        process = await asyncio.create_subprocess_exec(
            str(path), f"-listen=/unix{scratch}/p2pd.sock", "-hostAddrs=/ip4/127.0.0.1/tcp/0",
            stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            peer = await asyncio.wait_for(_peer_id_line(process.stdout), timeout_s)
        except asyncio.TimeoutError:
            peer = None
            why = f"did not report a Peer ID within {timeout_s:g}s"
        else:
            why = f"exited with code {await process.wait()} before reporting a Peer ID" if peer is None else ""
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        if peer is not None:
            return passed("p2pd", f"{path} starts ({peer})")
        stderr = (await process.stderr.read()).decode(errors="replace").strip()
        tail = " | ".join(stderr.splitlines()[-5:]) or "(nothing on stderr)"
        return failed("p2pd", f"{path} {why}; stderr: {tail}", fix)


async def _peer_id_line(stdout: asyncio.StreamReader) -> str | None:
    while line := await stdout.readline():
        text = line.decode(errors="replace").strip()
        if text.startswith("Peer ID:"):
            return text
    return None


def tcp_ports(host_maddrs: list[str]) -> list[tuple[str, int]]:
    """(host, port) of each /ip4|ip6/.../tcp/N listen address; others (QUIC, DNS) have no port to bind."""
    endpoints = []
    for maddr in host_maddrs:
        parts = maddr.strip("/").split("/")
        pairs = dict(zip(parts[::2], parts[1::2]))
        host = pairs.get("ip4") or pairs.get("ip6")
        if host and pairs.get("tcp", "").isdigit():
            endpoints.append((host, int(pairs["tcp"])))
    return endpoints


def check_ports(endpoints: list[tuple[str, int, str]]) -> list[Check]:
    """Each (host, port, config key) is bindable now; port 0 (any free port) always is."""
    checks = []
    for host, port, key in endpoints:
        name = f"port {key}"
        if port == 0:
            checks.append(passed(name, f"{host}: any free port (0)"))
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as exc:
            fix = f"stop what holds TCP port {port} (ss -ltnp 'sport = :{port}') or choose another in {key}"
            checks.append(failed(name, f"cannot bind {host}:{port}: {exc.strerror or exc}", fix))
        else:
            checks.append(passed(name, f"{host}:{port} is free"))
    return checks


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def check_disk(data_dir: Path, model_bytes: int) -> Check:
    """Room for the model cache and a fetched version (2x the model) plus 1 GiB for logs and checkpoints."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    needed = 2 * model_bytes + DISK_HEADROOM_BYTES
    detail = f"{free / GiB:.1f} GiB free at {existing} (data_dir {data_dir}); needs about {needed / GiB:.1f} GiB"
    if free < needed:
        return failed("disk", detail, "free space there or set data_dir to a larger disk")
    return passed("disk", detail)
