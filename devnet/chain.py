"""The devnet's chain: anvil as a managed child whose state survives a clean stop.

anvil loads `chain/anvil-state.json` (blocks, receipts, accounts) if present and dumps its state
on SIGTERM to `anvil-state.next.json`; `persist_chain_state` renames that over the old file only
once it parses as JSON, so a crash mid-dump leaves the previous state whole. anvil runs in its
own process group (unlike `devnet.anvil.Anvil`, which tests use), so a terminal's Ctrl-C reaches
only `devnet up`, which then stops anvil last, after every process that writes to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.devnet.anvil import DEFAULT_CHAIN_ID, AnvilError, DevAccount, find_anvil_binary
from thinkmesh.devnet.layout import DevnetLayout
from thinkmesh.devnet.ports import port_open
from thinkmesh.devnet.processes import DevnetError, ManagedProcess, ProcessGroup, wait_for
from thinkmesh.protocol.runtime.atomic_files import replace_file

ANVIL_START_TIMEOUT_S = 30.0
DEV_ACCOUNTS = 10


@dataclass(frozen=True)
class DevChain:
    """A running devnet chain: where to reach it and anvil's funded dev accounts (public test keys)."""

    rpc_url: str
    chain_id: int
    accounts: tuple[DevAccount, ...]
    resumed: bool

    @property
    def faucet(self) -> DevAccount:
        """The account that deploys, mints and pays gas for newcomers: anvil's account 0."""
        return self.accounts[0]


def require_anvil() -> Path:
    """The anvil binary, or a `DevnetError` telling the user to run `make install`."""
    try:
        return find_anvil_binary()
    except AnvilError as exc:
        raise DevnetError(f"the npm toolchain is missing: {exc}. Run `make install` first.") from None


def start_chain(layout: DevnetLayout, port: int, group: ProcessGroup, chain_id: int = DEFAULT_CHAIN_ID) -> DevChain:
    """Starts anvil on 127.0.0.1:`port` (resuming the saved state if any) and waits for its RPC."""
    binary = require_anvil()
    layout.ensure()
    resumed = layout.chain_state.is_file()
    if resumed:
        _check_state_file(layout.chain_state)
    layout.anvil_accounts.unlink(missing_ok=True)
    layout.chain_state_next.unlink(missing_ok=True)
    argv = [
        str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id),
        "--accounts", str(DEV_ACCOUNTS), "--config-out", str(layout.anvil_accounts),
        "--dump-state", str(layout.chain_state_next),
    ]  # fmt: skip
    if resumed:
        argv += ["--load-state", str(layout.chain_state)]
    process = group.start(ManagedProcess("anvil", argv, layout.log_file("anvil")))
    wait_for(lambda: port_open(port) and layout.anvil_accounts.is_file(), ANVIL_START_TIMEOUT_S,
             f"anvil to answer on 127.0.0.1:{port} (log: {process.log_path})", group=group)
    return DevChain(f"http://127.0.0.1:{port}", chain_id, read_dev_accounts(layout.anvil_accounts), resumed)


def read_dev_accounts(path: Path) -> tuple[DevAccount, ...]:
    """anvil's `--config-out` accounts; they are anvil's well-known test keys, never secrets."""
    from eth_utils import to_checksum_address

    try:
        config = json.loads(path.read_text())
        pairs = zip(config["available_accounts"], config["private_keys"], strict=True)
        return tuple(DevAccount(to_checksum_address(address), key) for address, key in pairs)
    except (OSError, ValueError, KeyError) as exc:
        raise DevnetError(f"expected anvil's account list in {path}: {exc}") from exc


def persist_chain_state(layout: DevnetLayout) -> bool:
    """After anvil exited: makes its dump the state the next `up` loads. False if there was no good dump."""
    dumped = layout.chain_state_next
    if not dumped.is_file():
        return False
    try:
        _check_state_file(dumped)
    except DevnetError:
        dumped.rename(dumped.with_suffix(".damaged.json"))
        return False
    replace_file(dumped, layout.chain_state)
    return True


def _check_state_file(path: Path) -> None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DevnetError(
            f"the saved chain state {path} is unreadable ({exc}); start over with `thinkmesh devnet up --fresh`"
        ) from exc
    if not isinstance(state, dict) or "accounts" not in state:
        raise DevnetError(f"{path} is not an anvil state dump; start over with `thinkmesh devnet up --fresh`")
