"""The one seam through which code outside the node can change what a running node sends.

`thinkmesh node run` plugs in nothing: a node without a hook sends its honest work, unchanged, and
its loop has no other path. Tests and the devnet plug in an adversary here
(`devnet/cheating_node.py`, run by `thinkmesh devnet node-run --cheat MODE`), as OpenZeppelin keeps
its mocks beside the tests rather than as branches in the contracts.

`NodeDaemon(config, identity, keys, contribution_hook=hook)` calls, on its worker thread:

- `model_replaced(previous)` just before a newly fetched version overwrites the weights in place
  (also for the version cached on disk, installed at start-up); `previous` is the live model about
  to change, so a hook that wants the old version must copy it;
- `replace_contribution(announcement, honest, ...)` once per round, with the node's honest,
  signed contribution and what the node holds; what it returns is sent instead. Returning `honest`
  itself (the same object) means "unchanged", and the round's history records no replacement.

Both run between rollouts and upload, never concurrently with each other.
"""

from __future__ import annotations

from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement


class ContributionHook:
    """Base class with the documented no-op defaults; subclasses override what they need.

    `name` is what the node's /status (and each round's history entry in which the hook replaced
    the contribution) reports as `contribution_hook`.
    """

    name = "hook"

    def model_replaced(self, previous) -> None:
        """Called with the live model just before a new version's weights are written into it."""

    def replace_contribution(self, announcement: RoundAnnouncement, honest: Contribution, *, identity: NodeIdentity,
                             model, tokenizer) -> Contribution:
        """The contribution to send this round instead of `honest` (`honest` itself: unchanged)."""
        return honest


__all__ = ["ContributionHook"]
