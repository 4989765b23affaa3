"""How a thinkmesh process runs until it is asked to stop, and what its children inherit.

asyncio's signal handlers only poke the loop of the process that installed them, and a child
forked later (hivemind forks its DHT into a process of its own) inherits them: such a child then
ignores SIGTERM, and its parent waits for it forever at exit. Every child forked after
`install_child_hooks` (which `run_until_stopped` calls) gets the default dispositions back, so
SIGTERM stops it like any process.

Secrets stay with the process that needs them. A forked child (the DHT process, and through it
p2pd, which hivemind starts with a copy of its environment) gets an environment without the
key password and other secret-looking variables (`is_secret_variable`); a child started with
`subprocess` gets `scrubbed_environment()` from whoever starts it (`devnet up` does).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Mapping

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PASSWORD_ENV = "THINKMESH_KEY_PASSWORD"  # keystore.PASSWORD_ENV, without importing the keystore here
# Words that mark a variable as a secret wherever they stand in its name, split on "_".
SECRET_WORDS = frozenset({"PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "MNEMONIC", "TOKEN", "CREDENTIALS"})
SECRET_PAIRS = (("PRIVATE", "KEY"), ("API", "KEY"), ("SEED", "PHRASE"))
_hooks_installed = False


def is_secret_variable(name: str) -> bool:
    """True for THINKMESH_KEY_PASSWORD and names such as HF_TOKEN, AWS_SECRET_ACCESS_KEY,
    THINKMESH_NODE__CHAIN__PRIVATE_KEY; False for TOKENIZERS_PARALLELISM or PATH."""
    words = [word for word in name.upper().replace("__", "_").split("_") if word]
    if name == PASSWORD_ENV or SECRET_WORDS.intersection(words):
        return True
    return any(pair == tuple(words[i:i + 2]) for pair in SECRET_PAIRS for i in range(len(words) - 1))


def scrubbed_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) without its secret variables."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if not is_secret_variable(name)}


def _in_forked_child() -> None:
    for name in [name for name in os.environ if is_secret_variable(name)]:
        os.environ.pop(name, None)  # os.environ's pop unsets it in the C environment too
    try:
        signal.set_wakeup_fd(-1)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:  # forked from a thread other than the main one: nothing was inherited there
        pass


def install_child_hooks() -> None:
    """From now on every child this process forks drops the secrets from its environment and
    gets the default SIGINT/SIGTERM dispositions back. Idempotent."""
    global _hooks_installed
    if not _hooks_installed:
        os.register_at_fork(after_in_child=_in_forked_child)
        _hooks_installed = True


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs `main(stop)` in a new event loop; SIGINT and SIGTERM set `stop`, once or many times."""
    install_child_hooks()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
