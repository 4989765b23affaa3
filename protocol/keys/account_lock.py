"""One process per EVM account and chain: a second node or coordinator on an account already in
use is refused at start with the holder's PID, instead of racing the first one's nonces.

The lock is an exclusive, non-blocking `flock` on `<lock dir>/<chain id>-<address>.lock`; the
holder writes its PID and role into the file. The kernel drops the lock when the process ends,
however it ends, so a crash never leaves a stale lock (the file stays and names its last holder; never delete
it while a process may hold it, or a second one could lock a fresh file).
Within one process acquiring again returns the same lock: threads are already serialized by
protocol/chain/nonce_manager.py. A forked child closes its inherited copy, so a child outliving its
parent never keeps the account locked.

The lock directory is $THINKMESH_LOCK_DIR, else $THINKMESH_HOME/locks, else ~/.thinkmesh/locks.
It is per machine: it cannot see a process on another host using the same key.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_utils import to_checksum_address

from thinkmesh.protocol.chain.errors import AccountInUseError

LOCK_DIR_ENV = "THINKMESH_LOCK_DIR"
HOME_ENV = "THINKMESH_HOME"


@dataclass
class AccountLock:
    """A held account lock; `release()` is for tests and orderly hand-overs, process exit also frees it."""

    chain_id: int
    address: str
    path: Path
    role: str
    _fd: int | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        with _held_lock:
            if self._fd is not None:
                os.close(self._fd)  # closing the only descriptor drops the flock
                self._fd = None
            _held.pop(self.path, None)


_held: dict[Path, AccountLock] = {}
_held_lock = threading.Lock()


def default_lock_dir() -> Path:
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".thinkmesh")
    return home / "locks"


def account_lock_path(chain_id: int, address: str, lock_dir: Path | None = None) -> Path:
    return Path(lock_dir or default_lock_dir()) / f"{chain_id}-{to_checksum_address(address)}.lock"


def acquire_account_lock(chain_id: int, address: str, *, role: str, lock_dir: Path | None = None) -> AccountLock:
    """Takes `address` on `chain_id` for this process, or raises `AccountInUseError` naming the holder.

    `role` (e.g. "node 12D3KooW…", "coordinator") is written for the next contender's message.
    """
    address = to_checksum_address(address)
    path = account_lock_path(chain_id, address, lock_dir).absolute()
    with _held_lock:
        if path in _held:
            return _held[path]
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise AccountInUseError(chain_id, address, holder.get("pid"), holder.get("role"), str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "role": role, "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "chain_id": chain_id, "address": address}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        lock = AccountLock(chain_id, address, path, role, fd)
        _held[path] = lock
        return lock


def _read_holder(fd: int) -> dict:
    """The holder's record; empty if it has not written it yet (it locks first, then writes)."""
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _close_in_child() -> None:
    global _held_lock
    _held_lock = threading.Lock()
    for lock in _held.values():
        if lock._fd is not None:
            os.close(lock._fd)  # only this child's copy: the parent keeps its lock
            lock._fd = None
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)
