"""The built contract artifacts (ABI + bytecode) and the decoding of revert data against them.

Artifacts are produced by `npm run build --prefix contracts` (contracts/tools/export-artifacts.js)
and shipped as package data in `protocol/chain/abi/`, so Python needs no node or compiler at run time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import to_checksum_address

from thinkmesh.protocol.chain.errors import ArtifactError
from thinkmesh.protocol.rules.hashing import keccak256

LEDGER_CONTRACT = "ThinkMeshLedger"
TOKEN_CONTRACT = "ThinkMeshToken"
ARTIFACT_NAMES = (LEDGER_CONTRACT, TOKEN_CONTRACT)

# Solidity's built-in revert payloads, present in every contract.
_BUILTIN_ERRORS: tuple[Mapping[str, Any], ...] = (
    {"type": "error", "name": "Error", "inputs": [{"name": "message", "type": "string"}]},
    {"type": "error", "name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
)


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract: its ABI, init bytecode, and the hash of the sources it came from."""

    name: str
    abi: tuple[Mapping[str, Any], ...]
    bytecode: bytes
    sources_hash: str
    compiler_version: str


@cache
def load_artifact(name: str) -> ContractArtifact:
    """Reads `protocol/chain/abi/<name>.json`; raises `ArtifactError` if it is missing or malformed."""
    try:
        text = resources.files("thinkmesh.protocol.chain").joinpath("abi", f"{name}.json").read_text()
        raw = json.loads(text)
        return ContractArtifact(
            name=raw["contractName"],
            abi=tuple(raw["abi"]),
            bytecode=bytes.fromhex(raw["bytecode"].removeprefix("0x")),
            sources_hash=raw["sourcesHash"],
            compiler_version=raw["compiler"]["version"],
        )
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"expected the built artifact protocol/chain/abi/{name}.json; build it with `npm run build --prefix contracts`"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"protocol/chain/abi/{name}.json is not a contract artifact: {exc}") from exc


def canonical_type(param: Mapping[str, Any]) -> str:
    """The ABI type as it appears in a signature: tuples expand to their components."""
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(component) for component in param["components"])
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def selector(entry: Mapping[str, Any]) -> bytes:
    """The 4-byte selector of an ABI function or error entry."""
    types = ",".join(canonical_type(param) for param in entry["inputs"])
    return keccak256(f"{entry['name']}({types})".encode())[:4]


@dataclass(frozen=True)
class DecodedRevert:
    name: str
    args: dict[str, Any]


class RevertDecoder:
    """Maps revert data to `Name(arg=value, ...)` using every error declared in the given ABIs."""

    def __init__(self, abis: Iterable[Sequence[Mapping[str, Any]]]) -> None:
        self._errors: dict[bytes, Mapping[str, Any]] = {}
        for abi in (*abis, _BUILTIN_ERRORS):
            for entry in abi:
                if entry.get("type") == "error":
                    self._errors.setdefault(selector(entry), entry)

    @classmethod
    def for_artifacts(cls, names: Iterable[str] = ARTIFACT_NAMES) -> RevertDecoder:
        return cls(load_artifact(name).abi for name in names)

    def decode(self, data: bytes) -> DecodedRevert:
        """Never raises: unknown or malformed data decodes to `UnknownError(selector=..., data=...)`."""
        if len(data) < 4:
            return DecodedRevert("EmptyRevert" if not data else "UnknownError", {"data": data})
        entry = self._errors.get(data[:4])
        if entry is None:
            return DecodedRevert("UnknownError", {"selector": data[:4], "data": data[4:]})
        types = [canonical_type(param) for param in entry["inputs"]]
        try:
            values = abi_decode(types, data[4:])
        except (DecodingError, ValueError) as exc:
            return DecodedRevert(entry["name"], {"undecodable": f"{exc}", "data": data[4:]})
        names = [param.get("name") or f"arg{i}" for i, param in enumerate(entry["inputs"])]
        shown = [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)]
        return DecodedRevert(entry["name"], dict(zip(names, shown, strict=True)))
