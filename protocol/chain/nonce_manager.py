"""One account's transactions leave this process one at a time, in the order they were asked for.

Every `TransactionSender` for the same (chain id, account) in a process shares one `AccountNonces`,
so two clients or two threads never sign different transactions with the same nonce. Its `turn()`
is a first-come-first-served lock (re-entrant for the thread holding it) held from choosing the
nonce until the receipt. Transactions that were signed and sent but never confirmed are kept as
their exact signed bytes in `outstanding` and are re-broadcast before anything new is signed:
a retry resends the same transaction, never a second one with the same nonce.

Other processes are kept off the account by `protocol/keys/account_lock.py`, not here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterator

from eth_utils import to_checksum_address


class AccountNonces:
    """The in-process queue and the unconfirmed transactions of one account on one chain.

    Thread-safe. `outstanding` may be read and changed only while holding `turn()`.
    """

    def __init__(self, chain_id: int, address: str) -> None:
        self.chain_id = chain_id
        self.address = to_checksum_address(address)
        self.outstanding: dict[int, bytes] = {}  # nonce -> signed raw transaction, sent, no receipt yet
        self._condition = threading.Condition()
        self._waiting: deque[object] = deque()
        self._owner: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Waits for this caller's turn (callers are served in arrival order) and holds it."""
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
            else:
                ticket = object()
                self._waiting.append(ticket)
                try:
                    self._condition.wait_for(lambda: self._owner is None and self._waiting[0] is ticket)
                except BaseException:
                    self._waiting.remove(ticket)
                    self._condition.notify_all()
                    raise
                self._waiting.popleft()
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._condition.notify_all()

    @property
    def queued(self) -> int:
        """Callers waiting for a turn (not counting the holder)."""
        with self._condition:
            return len(self._waiting)


_registry: dict[tuple[int, str], AccountNonces] = {}
_registry_lock = threading.Lock()


def account_nonces(chain_id: int, address: str) -> AccountNonces:
    """This process's one `AccountNonces` for `address` on `chain_id`."""
    key = (chain_id, to_checksum_address(address))
    with _registry_lock:
        if key not in _registry:
            _registry[key] = AccountNonces(*key)
        return _registry[key]


def _forget_in_child() -> None:
    """A forked child starts with no queue state: its parent's locks and turns are not its own."""
    global _registry_lock
    _registry.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
