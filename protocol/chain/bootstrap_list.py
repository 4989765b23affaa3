"""The ledger's bootstrap list as one coordinator's to keep: its own current multiaddrs, nothing stale.

Nodes joining from the chain alone (`node run --rpc --ledger`) dial what the list holds, so a
coordinator that restarts on another port must replace its old entries, or newcomers waste their
probe on dead addresses. Only entries naming this coordinator's PeerID are touched: the list may
also hold other peers (relays, a second coordinator) that another key put there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootstrapChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]


def reconcile_bootstrap_peers(client, peer_id: str, maddrs: list[str]) -> BootstrapChange:
    """Makes the entries of `peer_id` in `client`'s ledger exactly `maddrs` (a `LedgerClient` with the
    coordinator role); returns what was sent."""
    suffix = f"/p2p/{peer_id}"
    own = [m for m in maddrs if m.endswith(suffix)]
    if len(own) != len(maddrs):
        foreign = sorted(set(maddrs) - set(own))
        raise ValueError(f"bootstrap multiaddrs must end with {suffix}, got {foreign}")
    listed = client.bootstrap_peers()
    removed = tuple(m for m in listed if m.endswith(suffix) and m not in own)
    added = tuple(m for m in dict.fromkeys(own) if m not in listed)
    for stale in removed:
        client.remove_bootstrap_peer(stale)
    for fresh in added:
        client.add_bootstrap_peer(fresh)
    return BootstrapChange(added=added, removed=removed)
