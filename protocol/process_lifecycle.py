"""How a thinkmesh process runs until it is asked to stop.

asyncio's signal handlers only poke the loop of the process that installed them, and a child
forked later (hivemind forks its DHT into a process of its own) inherits them: such a child then
ignores SIGTERM, and its parent waits for it forever at exit. Every child forked after
`run_until_stopped` starts gets the default dispositions back, so SIGTERM stops it like any
process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_fork_hook_installed = False


def _default_signals_in_child() -> None:
    try:
        signal.set_wakeup_fd(-1)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:  # forked from a thread other than the main one: nothing was inherited there
        pass


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(stop)` in a new event loop; SIGINT and SIGTERM set `stop`, once or many times."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_default_signals_in_child)
        _fork_hook_installed = True

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
