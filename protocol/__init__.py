"""What both sides of a round must agree on, and the shared machinery around it.

- `rules/`: the round protocol itself, pure rules in round order. With this package alone anyone
  re-runs a verdict and a payout.
- `chain/`: the EVM ledger's client: records, transactions, events, settlement in parts.
- `keys/`: encrypted keystores, backups, the one-process-per-identity lock.
- `p2p/`: the libp2p transport, the DHT's signed records and its supervised process.
- `runtime/`: config files, logging and metrics, process lifecycle.
- `cli/`: the `thinkmesh` command line's root, and the commands that need only this layer.
"""

from thinkmesh.protocol.rules.errors import ProtocolError

__all__ = ["ProtocolError"]
