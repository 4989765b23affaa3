import multiprocessing
import os
import signal
import time

import pytest

from thinkmesh.protocol.runtime.process_lifecycle import run_until_stopped


def _sleep_forever(started) -> None:
    started.set()
    time.sleep(120)


@pytest.mark.timeout(60)
def test_children_forked_by_a_running_daemon_die_on_sigterm():
    """hivemind forks its DHT from inside the daemon's loop; that child must not ignore SIGTERM."""
    exit_codes = []

    async def daemon(stop):
        context = multiprocessing.get_context("fork")
        started = context.Event()
        child = context.Process(target=_sleep_forever, args=(started,))
        child.start()
        assert started.wait(timeout=20)
        os.kill(child.pid, signal.SIGTERM)
        child.join(timeout=20)
        exit_codes.append(child.exitcode)
        if child.is_alive():
            child.kill()

    run_until_stopped(daemon)
    assert exit_codes == [-signal.SIGTERM]


@pytest.mark.timeout(60)
def test_sigterm_to_the_daemon_sets_its_stop_event():
    seen = []

    async def daemon(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        seen.append("stopped")

    run_until_stopped(daemon)
    assert seen == ["stopped"]
