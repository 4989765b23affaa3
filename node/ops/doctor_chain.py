"""The doctor's checks that talk to the chain and the mesh: RPC, ledger, bootstrap peers,
keystore, registration and stake. Each returns `doctor.Check` records and never raises for a
broken chain or peer; what a later check needs comes back alongside (the deployment, the keys).
"""

from __future__ import annotations

import asyncio
import time

from thinkmesh.node.ops.doctor import Check, failed, passed, skipped
from thinkmesh.protocol.rules.errors import ProtocolError

RPC_TIMEOUT_S = 5.0


def _whole(amount: int) -> str:
    from thinkmesh.protocol.chain.ledger import TOKEN_DECIMALS

    return f"{amount / 10**TOKEN_DECIMALS:g}"


def check_rpc(config) -> tuple[list[Check], object | None, list[str]]:
    """(checks, the ledger's `Deployment` or None, its bootstrap multiaddrs)."""
    from thinkmesh.node.work.bootstrap import read_ledger_bootstrap
    from thinkmesh.protocol.chain.client import connect_web3

    chain = config.chain
    if chain is None:
        return [skipped("rpc", "no [chain] section (pass --rpc URL --ledger ADDRESS to check the chain)")], None, []
    try:
        web3 = connect_web3(chain.rpc_url, timeout_s=RPC_TIMEOUT_S)
        started = time.perf_counter()
        chain_id = web3.eth.chain_id
        block = web3.eth.block_number
        latency_ms = (time.perf_counter() - started) * 500  # two round trips
    except (ProtocolError, OSError, ValueError) as exc:
        return [failed("rpc", f"{chain.rpc_url} does not answer: {exc}",
                       "start the node's RPC or fix [chain] rpc_url (or --rpc)")], None, []
    expected = config.chain_id if "chain_id" in config.model_fields_set else None
    detail = f"{chain.rpc_url}: chain id {chain_id}, block {block}, {latency_ms:.0f} ms per call"
    if expected is not None and chain_id != expected:
        checks = [failed("rpc", f"{detail}; the config says chain_id = {expected}",
                         f"point [chain] rpc_url (or --rpc) at chain {expected}, or set chain_id = {chain_id}")]
    else:
        checks = [passed("rpc", detail)]
    try:
        deployment, listed = read_ledger_bootstrap(chain)
    except ProtocolError as exc:
        checks.append(failed("ledger", str(exc), "fix [chain] ledger (or --ledger) / deployment_file"))
        return checks, None, []
    checks.append(passed("ledger", f"{deployment.ledger} on chain {deployment.chain_id}, token {deployment.token}, "
                                   f"{len(listed)} bootstrap peer(s) listed"))
    return checks, deployment, listed


def check_bootstrap(config, listed: list[str], dial: bool) -> list[Check]:
    """One line per bootstrap peer: the configured ones, else the ledger's; `dial` when p2pd starts."""
    from thinkmesh.node.work.bootstrap import choose_coordinator, probe_bootstrap

    source = "[network] initial_peers" if config.network.initial_peers else "the ledger"
    peers = list(config.network.initial_peers) or listed
    if not peers:
        return [failed("bootstrap", "no peers: [network] initial_peers is empty and the ledger lists none",
                       "start the coordinator (it lists its multiaddrs in the ledger) or set initial_peers")]
    chain_id = config.chain_id
    probes = asyncio.run(probe_bootstrap(peers, config.run_id, chain_id, dial=dial))
    coordinator, probes = choose_coordinator(probes, config.coordinator_peer_id)
    fixes = {
        "malformed": "correct or remove this multiaddr (it must end in /p2p/<PeerID>)",
        "unreachable": "check that the coordinator runs and that this host/port is reachable from here (firewall, NAT)",
        "wrong PeerID": "the address serves another peer: update the multiaddr or coordinator_peer_id",
        "wrong run": f"this peer does not serve run {config.run_id!r} on chain {chain_id}: check run_id and chain_id",
    }
    checks = [passed(f"bootstrap {p.multiaddr}", p.detail) if p.ok
              else failed(f"bootstrap {p.multiaddr}", f"{p.failure.value}: {p.detail}", fixes[p.failure.value])
              for p in probes]
    if any(p.ok for p in probes):
        origin = "the config" if config.coordinator_peer_id else source
        checks.append(passed("coordinator", f"{coordinator} (from {origin})"))
    return checks


def check_keystore(config) -> tuple[Check, object | None]:
    from thinkmesh.protocol.keys.keystore import resolve_password, unlock_keys

    identity = config.identity
    try:
        password = resolve_password(str(identity.password_file) if identity.password_file else None)
        keys = unlock_keys(identity.key_dir, password)
    except ProtocolError as exc:
        fix = "set THINKMESH_KEY_PASSWORD or [identity] password_file; make keys with `thinkmesh keys new`"
        return failed("keystore", f"{identity.key_dir}: {exc}", fix), None
    detail = f"{identity.key_dir} unlocks: peer {keys.identity.peer_id}, account {keys.evm_address}"
    return passed("keystore", detail), keys


def check_registration(config, deployment, keys) -> list[Check]:
    """The node's account on the ledger: registered (or able to register), its stake, its identity."""
    from thinkmesh.protocol.chain.client import LedgerClient
    from thinkmesh.protocol.chain.ledger import NodeStatus, tokens

    if deployment is None or keys is None:
        return [skipped("registration", "needs the ledger and the keystore (see above)")]
    chain = config.chain
    try:
        client = LedgerClient.connect(chain.rpc_url, deployment)
        record, minimum = client.node(keys.evm_address), client.min_stake()
        if record.status == NodeStatus.NONE:
            return [_unregistered(client, chain, keys.evm_address, minimum, tokens(chain.stake))]
        bound = client.bound_node(keys.identity.public_key)
    except ProtocolError as exc:
        return [failed("registration", f"reading the ledger failed: {exc}", "check the RPC (see `rpc` above)")]
    status = record.status.name.lower()
    checks = []
    if record.status != NodeStatus.ACTIVE:
        checks.append(failed("registration", f"{record.address} is {status}",
                             "an unbonding or exited node earns nothing: register with a new account"))
    elif record.stake < minimum:
        checks.append(failed("registration", f"{record.address} active, stake {_whole(record.stake)} below the "
                                             f"minimum {_whole(minimum)}", "add stake (`LedgerClient.add_stake`)"))
    else:
        checks.append(passed("registration", f"{record.address} active, stake {_whole(record.stake)} "
                                             f"(minimum {_whole(minimum)}), claimable {_whole(record.claimable)}"))
    if record.ed25519_key != keys.identity.public_key:
        checks.append(failed("identity", f"the ledger registers {record.address} with another Ed25519 key, "
                                         f"not this keystore's (peer {keys.identity.peer_id})",
                             "use the key directory this account registered with"))
    elif bound != record.address:
        checks.append(failed("identity", f"peer {keys.identity.peer_id} is bound to {bound}, not {record.address}: "
                                         "its work is paid to that account",
                             "use the keystore of the account it is bound to"))
    else:
        checks.append(passed("identity", f"peer {keys.identity.peer_id} is registered to and paid as {record.address}"))
    return checks


def _unregistered(client, chain, address: str, minimum: int, stake: int) -> Check:
    if not chain.auto_register:
        return failed("registration", f"{address} is not registered and [chain] auto_register = false",
                      "set auto_register = true, or register the account with a stake")
    balance = client.token_balance(address)
    gas = client.web3.eth.get_balance(address)
    plan = f"{address} is not registered; `node run` will register it with stake {chain.stake}"
    if stake < minimum:
        return failed("registration", f"{plan}, below the minimum {_whole(minimum)}",
                      f"set [chain] stake >= {_whole(minimum)}")
    if balance < stake or gas == 0:
        return failed("registration", f"{plan}, but it holds {_whole(balance)} tokens and {gas} wei of gas",
                      f"send {address} reward tokens and gas (ETH) first")
    return passed("registration", f"{plan} (holds {_whole(balance)} tokens)")
