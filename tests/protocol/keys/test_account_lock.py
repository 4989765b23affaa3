"""The account lock: a second process on one (chain, account) is refused, naming the holder; none is stale."""

import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

from thinkmesh.protocol.keys.account_lock import acquire_account_lock, account_lock_path
from thinkmesh.protocol.chain.errors import AccountInUseError, ChainError

ACCOUNT = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
CHECKSUMMED = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from thinkmesh.protocol.keys.account_lock import acquire_account_lock
    acquire_account_lock(int(sys.argv[1]), sys.argv[2], role="node holder", lock_dir=Path(sys.argv[3]))
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin or kills us
    """
)


def hold_in_another_process(chain_id: int, address: str, lock_dir) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(chain_id), address, str(lock_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.timeout(60)
def test_second_process_is_refused_naming_account_and_pid_and_crash_leaves_no_stale_lock(tmp_path):
    holder = hold_in_another_process(31337, ACCOUNT, tmp_path)
    try:
        with pytest.raises(AccountInUseError) as refused:
            acquire_account_lock(31337, ACCOUNT, role="node second", lock_dir=tmp_path)
        assert isinstance(refused.value, ChainError)
        assert refused.value.pid == holder.pid and refused.value.role == "node holder"
        message = str(refused.value)
        assert CHECKSUMMED in message and f"pid {holder.pid}" in message and "31337" in message
        other_chain = acquire_account_lock(1, ACCOUNT, role="node", lock_dir=tmp_path)  # another chain is free
        other_chain.release()
    finally:
        holder.kill()  # a crash: no cleanup runs in the holder
        holder.wait()
    lock = acquire_account_lock(31337, ACCOUNT, role="node second", lock_dir=tmp_path)
    try:
        assert lock.held and lock.path == account_lock_path(31337, ACCOUNT, tmp_path).absolute()
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
        assert oct(lock.path.stat().st_mode & 0o777) == oct(0o600)
    finally:
        lock.release()


def test_same_process_gets_the_same_lock_back(tmp_path):
    first = acquire_account_lock(5, ACCOUNT, role="coordinator", lock_dir=tmp_path)
    try:
        assert acquire_account_lock(5, CHECKSUMMED, role="node", lock_dir=tmp_path) is first
    finally:
        first.release()
    assert not first.held


def _child_waits(ready, done) -> None:
    ready.set()
    done.wait(30)


@pytest.mark.timeout(60)
def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    lock = acquire_account_lock(7, ACCOUNT, role="node", lock_dir=tmp_path)
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=_child_waits, args=(ready, done))
    child.start()
    try:
        assert ready.wait(30)
        lock.release()  # the parent is gone from the account; the child (still alive) must not hold it
        holder = hold_in_another_process(7, ACCOUNT, tmp_path)
        holder.kill()
        holder.wait()
    finally:
        done.set()
        child.join(30)
