"""The shipped ABI/bytecode artifacts match contracts/src (no compiler needed to check)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from thinkmesh.protocol.chain.artifacts import ARTIFACT_NAMES, LEDGER_CONTRACT, load_artifact, selector

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
EXPORT_SCRIPT = "tools/export-artifacts.js"


def contract_sources_hash(contracts_dir: Path = CONTRACTS_DIR) -> str:
    """sha256 over src/** and the export script, each entry `relative-path \\0 bytes \\0`, sorted by path.

    The same definition as `sourcesHash()` in contracts/tools/export-artifacts.js.
    """
    files = [p for p in (contracts_dir / "src").rglob("*") if p.is_file()] + [contracts_dir / EXPORT_SCRIPT]
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(contracts_dir).as_posix() for p in files):
        digest.update(rel.encode() + b"\0" + (contracts_dir / rel).read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.mark.parametrize("name", ARTIFACT_NAMES)
def test_artifact_is_fresh_against_the_sources(name: str) -> None:
    artifact = load_artifact(name)
    assert artifact.sources_hash == contract_sources_hash(), (
        f"protocol/chain/abi/{name}.json is stale against contracts/src: run `npm run build --prefix contracts`"
    )
    assert len(artifact.bytecode) > 1_000


def test_artifacts_were_built_by_the_pinned_compiler() -> None:
    pinned = json.loads((CONTRACTS_DIR / "package.json").read_text())["devDependencies"]["solc"]
    for name in ARTIFACT_NAMES:
        assert load_artifact(name).compiler_version.startswith(f"{pinned}+commit.")


def test_ledger_abi_has_every_function_the_client_calls() -> None:
    abi = load_artifact(LEDGER_CONTRACT).abi
    functions = {entry["name"] for entry in abi if entry["type"] == "function"}
    assert {
        "fund", "claim", "poolTotals", "register", "addStake", "updateMetadata", "beginUnbonding",
        "withdrawStake", "node", "openRound", "settleRound", "slash", "round",
        "isSlashed", "verifyTrace", "addBootstrapPeer", "removeBootstrapPeer", "bootstrapPeers",
        "pause", "unpause", "setMinStake", "grantRole", "hasRole",
    } <= functions  # fmt: skip
    settle = next(entry for entry in abi if entry.get("name") == "settleRound")
    from eth_utils import keccak

    assert selector(settle) == keccak(
        text="settleRound(uint64,bytes32,bytes32,(address,uint32,uint64,uint96)[],(uint32,uint32,int64,uint32))"
    )[:4]


def test_sources_hash_changes_with_any_source_byte(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "src" / "A.sol").write_text("contract A {}")
    (tmp_path / EXPORT_SCRIPT).write_text("// export")
    before = contract_sources_hash(tmp_path)
    (tmp_path / "src" / "A.sol").write_text("contract A { }")
    assert contract_sources_hash(tmp_path) != before
