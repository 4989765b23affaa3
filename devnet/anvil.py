"""A local EVM chain: anvil from the npm package `@foundry-rs/anvil`, as a process you start and stop.

`Anvil.start()` picks a free port on 127.0.0.1, launches the binary that `npm ci --prefix contracts`
installed, and returns once the JSON-RPC answers `eth_chainId` with the requested chain id; `stop()`
terminates it (then kills it) and removes its scratch directory. Nothing runs in the background
between those two calls except the anvil process itself. The funded dev accounts are read back from
anvil's own `--config-out` file, so no private key is written in this repository.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkmesh.devnet.ports import free_port
from thinkmesh.protocol.chain.errors import ChainError

DEFAULT_CHAIN_ID = 31337
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
RPC_TIMEOUT_S = 5.0
START_ATTEMPTS = 3
ANVIL_ENV = "THINKMESH_ANVIL"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"


class AnvilError(ChainError):
    """anvil could not be found, started, or driven."""


@dataclass(frozen=True)
class DevAccount:
    """One of anvil's pre-funded accounts (anvil's public, well-known dev keys: never use on a real chain)."""

    address: str
    private_key: str


def find_anvil_binary(contracts_dir: Path = CONTRACTS_DIR) -> Path:
    """The anvil executable: `$THINKMESH_ANVIL`, else the platform binary inside contracts/node_modules.

    The npm package's `bin.mjs` wrapper is skipped on purpose: it runs anvil as a child of node, and
    stopping the wrapper would orphan the chain.
    """
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise AnvilError(f"{ANVIL_ENV} names {path}, which is not a file")
        return path
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    candidate = contracts_dir / "node_modules" / "@foundry-rs" / f"anvil-{system}-{machine}" / "bin" / "anvil"
    if candidate.is_file():
        return candidate
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilError(
        f"expected the anvil binary at {candidate} (installed by `npm ci --prefix {contracts_dir}`), "
        f"or {ANVIL_ENV}=/path/to/anvil; found neither"
    )


class Anvil:
    """One anvil process. Use `with Anvil() as chain:` or call `start()` / `stop()` yourself.

    Blocks are mined per transaction (automine), so a receipt is available as soon as a
    transaction is accepted. On Linux the process is tied to the thread that started it
    (`die_with_parent`): start it from a thread that outlives it, normally the main thread. `rpc()` is a minimal JSON-RPC client for anvil's own methods
    (`evm_increaseTime`, `evm_mine`, snapshots) that the web3 client does not cover.
    """

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        accounts: int = 10,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | None = None,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = True,
    ) -> None:
        self.chain_id = chain_id
        self.host = host
        self._requested_port = port
        self._accounts_count = accounts
        self._binary = binary
        self._extra_args = extra_args
        self._die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._port: int | None = None
        self._accounts: tuple[DevAccount, ...] = ()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Anvil:
        """Launches anvil and waits until its RPC answers; raises `AnvilError` naming the log on failure."""
        if self._process is not None:
            raise AnvilError(f"anvil is already running at {self.rpc_url}")
        binary = self._binary or find_anvil_binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="thinkmesh-anvil-"))
        attempts = 1 if self._requested_port else START_ATTEMPTS
        deadline = time.monotonic() + timeout_s
        last_error = ""
        for attempt in range(attempts):
            port = self._requested_port or free_port(self.host)
            last_error = self._launch(binary, port, attempt, deadline)
            if not last_error:
                return self
        self.stop()
        raise AnvilError(last_error)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Terminates anvil (SIGTERM, then SIGKILL after `timeout_s`) and deletes its scratch files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what a client needs

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise AnvilError("anvil is not running: call start() first")
        return self._port

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def accounts(self) -> tuple[DevAccount, ...]:
        """The pre-funded dev accounts, in anvil's order (account 0 is the usual deployer)."""
        return self._accounts

    def rpc(self, method: str, params: list[Any] | None = None, timeout_s: float = RPC_TIMEOUT_S) -> Any:
        """One JSON-RPC call; returns `result` or raises `AnvilError` with the node's error."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        request = urllib.request.Request(self.rpc_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, OSError) as exc:
            raise AnvilError(f"anvil at {self.rpc_url} did not answer {method}: {exc}") from exc
        if "error" in reply:
            raise AnvilError(f"anvil refused {method}({params}): {reply['error']}")
        return reply["result"]

    def increase_time(self, seconds: int) -> int:
        """Moves the chain clock forward and mines a block so the next transaction sees it; returns the new timestamp."""
        self.rpc("evm_increaseTime", [int(seconds)])
        self.rpc("evm_mine")
        block = self.rpc("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    def snapshot(self) -> str:
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", [snapshot_id]):
            raise AnvilError(f"anvil could not revert to snapshot {snapshot_id}")

    # ------------------------------------------------------------------ internals

    def _launch(self, binary: Path, port: int, attempt: int, deadline: float) -> str:
        """Starts one anvil on `port`; returns "" once it answers, or why it did not."""
        assert self._workdir is not None
        config_path = self._workdir / f"config-{attempt}.json"
        log_path = self._workdir / f"anvil-{attempt}.log"
        args = [
            str(binary),
            "--host", self.host,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--accounts", str(self._accounts_count),
            "--config-out", str(config_path),
            *self._extra_args,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if self._die_with_parent and sys.platform == "linux" else None,
            )
        self._port = port
        delay = 0.02
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                self._process = None
                self._port = None
                return f"anvil exited with code {code} on port {port}; log tail:\n{tail}"
            if self._chain_id_answers() and config_path.is_file():
                self._accounts = _read_accounts(config_path)
                return ""
            time.sleep(delay)  # polling a socket that has no readiness event; backs off to 0.2 s
            delay = min(delay * 2, 0.2)
        self.stop()
        return f"anvil did not answer on {self.host}:{port} within the start timeout; log at {log_path}"

    def _chain_id_answers(self) -> bool:
        try:
            answered = int(self.rpc("eth_chainId", timeout_s=1.0), 16)
        except AnvilError:
            return False
        if answered != self.chain_id:
            raise AnvilError(f"anvil on port {self._port} reports chain id {answered}, expected {self.chain_id}")
        return True


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM when the thread that started it
    exits, so a test runner killed without cleanup (SIGKILL, os._exit) leaves no chain behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _read_accounts(config_path: Path) -> tuple[DevAccount, ...]:
    try:
        config = json.loads(config_path.read_text())
        pairs = zip(config["available_accounts"], config["private_keys"], strict=True)
    except (OSError, ValueError, KeyError) as exc:
        raise AnvilError(f"expected anvil's account list in {config_path}, could not read it: {exc}") from exc
    from eth_utils import to_checksum_address

    return tuple(DevAccount(to_checksum_address(address), key) for address, key in pairs)
