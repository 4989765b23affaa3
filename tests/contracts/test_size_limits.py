"""The contract's size limits and Python's are one set of numbers.

Every numeric `constant` in contracts/src is read from the Solidity text and must equal its named
Python counterpart, so neither side can change a limit alone: a value Python accepts that the
contract refuses would cost a reverted transaction, and the reverse would refuse what the chain takes.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from thinkmesh.protocol.chain import client, ledger, round_details
from thinkmesh.protocol.chain.errors import LedgerRecordError
from thinkmesh.protocol.chain.ledger import bounded_field
from thinkmesh.protocol.rules import strategies
from thinkmesh.protocol.rules.hashing import keccak256

SOURCES = Path(__file__).resolve().parents[2] / "contracts" / "src"
NUMERIC = re.compile(r"\buint\d*\s+(?:internal|public|private)?\s*constant\s+(\w+)\s*=\s*([0-9+*\s]+);")
ROLE = re.compile(r"\bbytes32\s+public\s+constant\s+(\w+)\s*=\s*keccak256\(\"([^\"]*)\"\);")

PYTHON_COUNTERPARTS = {
    "MAX_PEER_ID_BYTES": ledger.MAX_PEER_ID_BYTES,
    "BINDING_BYTES": ledger.BINDING_BYTES,
    "MAX_STRATEGY_BYTES": strategies.MAX_NAME_BYTES,
    "MAX_ENDPOINT_BYTES": ledger.MAX_ENDPOINT_BYTES,
    "MAX_MULTIADDR_BYTES": ledger.MAX_MULTIADDR_BYTES,
    "MAX_STRATEGY_VALUES": round_details.MAX_STRATEGY_VALUES,
}


def _value(expression: str) -> int:
    """An integer expression of literals, `+` and `*` (what the limits are written as)."""
    tree = ast.parse(expression.strip(), mode="eval").body

    def evaluate(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise AssertionError(f"unexpected expression in a Solidity constant: {expression!r}")

    return evaluate(tree)


def solidity_constants(pattern: re.Pattern) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted(SOURCES.glob("*.sol")):
        for match in pattern.finditer(path.read_text()):
            assert match.group(1) not in found, f"{match.group(1)} is declared twice in contracts/src"
            found[match.group(1)] = match.groups()[1:]
    return found


def test_every_numeric_solidity_constant_has_an_equal_python_constant() -> None:
    declared = {name: _value(expression) for name, (expression,) in solidity_constants(NUMERIC).items()}
    assert declared.keys() == PYTHON_COUNTERPARTS.keys(), "a limit on one side only: name its counterpart here"
    assert declared == PYTHON_COUNTERPARTS


def test_the_role_python_grants_is_the_contract_s() -> None:
    roles = solidity_constants(ROLE)
    assert client.COORDINATOR_ROLE == keccak256(roles["COORDINATOR_ROLE"][0].encode())


def test_the_chain_s_strategy_limit_is_the_rules_name_limit() -> None:
    assert ledger.MAX_STRATEGY_BYTES is strategies.MAX_NAME_BYTES
    name = "é" * (strategies.MAX_NAME_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    with pytest.raises(strategies.StrategyError, match="UTF-8 bytes"):
        strategies.validate_strategy(dataclasses.replace(strategies.strategy_from_name("grpo"), name=name))


@pytest.mark.parametrize("limit", [ledger.MAX_ENDPOINT_BYTES, ledger.MAX_MULTIADDR_BYTES, ledger.MAX_PEER_ID_BYTES])
def test_a_value_over_a_limit_is_refused_before_it_is_sent(limit: int) -> None:
    assert bounded_field("field", "a" * limit, limit) == "a" * limit
    assert bounded_field("field", b"\x01" * limit, limit) == b"\x01" * limit
    with pytest.raises(LedgerRecordError, match=f"field of at most {limit} bytes"):
        bounded_field("field", "a" * (limit - 1) + "é", limit)
