"""The node operator's chain commands, all read from or sent to the ledger with the node's own key:

    thinkmesh node rewards --config node.toml     stake, earned, claimable, claimed, slashing events
    thinkmesh node claim   --config node.toml     pull the claimable balance (to --to, default self)
    thinkmesh node unstake --config node.toml     begin unbonding, or withdraw once it has ended

Instead of `--config`, `--rpc URL --ledger ADDR --key-dir DIR` name the chain and key directly.
The key's password comes from THINKMESH_KEY_PASSWORD, `--password-file`, or a prompt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError


class OperatorError(ProtocolError):
    """An operator command that cannot run as asked (no chain configured, nothing to do yet)."""


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `rewards`, `claim` and `unstake` to the `node` command's subparsers."""
    for name, handler, text in (
        ("rewards", show_rewards, "stake, earned, claimable and claimed rewards, and slashing events, from the chain"),
        ("claim", claim_rewards, "send the node's claimable rewards to its account (or --to)"),
        ("unstake", unstake, "begin unbonding; once the unbonding delay has passed, withdraw the stake"),
    ):
        parser = commands.add_parser(name, help=text, description=text)
        parser.add_argument("--config", type=Path, help="node TOML file (its [chain] section and key directory)")
        parser.add_argument("--rpc", help="EVM JSON-RPC URL (without --config)")
        parser.add_argument("--ledger", help="ThinkMeshLedger address (without --config)")
        parser.add_argument("--key-dir", type=Path, help="the node's key directory (without --config)")
        parser.add_argument("--password-file", help="file holding the key password")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "claim":
            parser.add_argument("--to", help="recipient address (default: the node's own account)")
        parser.set_defaults(handler=handler)


def connect_node_client(chain, keys):
    """A signing `LedgerClient` for a node config's `[chain]` section and the node's unlocked keys."""
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.chain.ledger import Deployment

    if chain.deployment_file is not None:
        deployment = Deployment.load(chain.deployment_file)
    elif chain.ledger:
        deployment = discover_deployment(chain.rpc_url, chain.ledger)
    else:
        raise OperatorError("[chain]: expected deployment_file or ledger, got neither")
    return LedgerClient.connect(chain.rpc_url, deployment, private_key="0x" + keys.evm_private_key.hex())


def _client(args: argparse.Namespace):
    from thinkmesh.node.config import ChainConfig, load_node_config
    from thinkmesh.protocol.keys.keystore import resolve_password, unlock_keys

    if args.config is not None:
        config = load_node_config(args.config)
        if config.chain is None:
            raise OperatorError(f"{args.config}: expected a [chain] section naming the ledger, found none")
        chain, key_dir = config.chain, config.identity.key_dir
        password_file = args.password_file or (str(config.identity.password_file) if config.identity.password_file else None)
    elif args.rpc and args.ledger and args.key_dir:
        chain, key_dir, password_file = ChainConfig(rpc_url=args.rpc, ledger=args.ledger), args.key_dir, args.password_file
    else:
        raise OperatorError("expected --config FILE, or --rpc, --ledger and --key-dir together")
    return connect_node_client(chain, unlock_keys(key_dir, resolve_password(password_file)))


def _print(args: argparse.Namespace, fields: dict, lines: list[str]) -> None:
    print(json.dumps(fields, sort_keys=True) if args.json else "\n".join(lines))


def rewards_report(client) -> dict:
    """Everything the chain records about the client's account, as JSON-ready values (token units)."""
    record = client.node()
    earned = client.events.compensations(node=client.address)
    claimed = client.events.claims(node=client.address)
    slashes = client.events.slashes(node=client.address)
    return {
        "address": client.address, "status": record.status.name.lower(), "stake": str(record.stake),
        "earned": str(sum(c.payout for c in earned)), "claimable": str(record.claimable),
        "claimed": str(sum(c.amount for c in claimed)), "unbonding_ends": record.unbonding_ends,
        "rounds_paid": [c.round_id for c in earned],
        "slashes": [{"round_id": s.round_id, "amount": str(s.amount),
                     "reason": _reason_name(s.reason),
                     "evidence_hash": "0x" + s.evidence_hash.hex()} for s in slashes],
    }


def _reason_name(code: int) -> str:
    from thinkmesh.protocol.rules.slashing import SlashReason

    try:
        return SlashReason(code).verdict_reason
    except ValueError:
        return f"code {code}"


def _tokens(amount: str) -> str:
    from decimal import Decimal

    return f"{Decimal(amount) / Decimal(10**18):f}"


def show_rewards(args: argparse.Namespace) -> int:
    report = rewards_report(_client(args))
    lines = [
        f"node       {report['address']} ({report['status']})",
        f"stake      {_tokens(report['stake'])}",
        f"earned     {_tokens(report['earned'])} over {len(report['rounds_paid'])} round(s)",
        f"claimable  {_tokens(report['claimable'])}",
        f"claimed    {_tokens(report['claimed'])}",
    ]
    lines += [f"slashed    round {s['round_id']}: {_tokens(s['amount'])} for {s['reason']} (evidence {s['evidence_hash']})"
              for s in report["slashes"]] or ["slashed    never"]
    _print(args, report, lines)
    return 0


def claim_rewards(args: argparse.Namespace) -> int:
    client = _client(args)
    claimable = client.node().claimable
    if claimable == 0:
        raise OperatorError(f"nothing to claim: {client.address} has a claimable balance of 0")
    amount, tx = client.claim(args.to)
    recipient = args.to or client.address
    _print(args, {"claimed": str(amount), "recipient": recipient, "tx": "0x" + tx.tx_hash.hex()},
           [f"claimed {_tokens(str(amount))} to {recipient} (tx 0x{tx.tx_hash.hex()}, block {tx.block_number})"])
    return 0


def unstake(args: argparse.Namespace) -> int:
    import time

    from thinkmesh.protocol.chain.ledger import NodeStatus

    client = _client(args)
    record = client.node()
    if record.status == NodeStatus.ACTIVE:
        tx = client.begin_unbonding()
        ends = client.node().unbonding_ends
        _print(args, {"action": "begin-unbonding", "unbonding_ends": ends, "tx": "0x" + tx.tx_hash.hex()},
               [f"unbonding started (tx 0x{tx.tx_hash.hex()}); withdraw after {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ends))} UTC"])
        return 0
    if record.status == NodeStatus.UNBONDING:
        now = client.web3.eth.get_block("latest")["timestamp"]
        if now < record.unbonding_ends:
            raise OperatorError(f"still unbonding: the stake can be withdrawn in {record.unbonding_ends - now} s")
        amount, tx = client.withdraw_stake()
        _print(args, {"action": "withdraw", "amount": str(amount), "tx": "0x" + tx.tx_hash.hex()},
               [f"withdrew {_tokens(str(amount))} (tx 0x{tx.tx_hash.hex()})"])
        return 0
    raise OperatorError(f"expected an active or unbonding node, {client.address} is {record.status.name.lower()}")
