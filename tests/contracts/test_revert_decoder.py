"""Revert data decodes to the Solidity error's name and named arguments, never raising."""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import keccak

from thinkmesh.protocol.chain.artifacts import RevertDecoder, selector


def _data(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(text=signature)[:4] + abi_encode(types, values)


DECODER = RevertDecoder.for_artifacts()


def test_custom_error_with_named_arguments() -> None:
    data = _data("RoundNotOpen(uint64,uint8)", ["uint64", "uint8"], [9, 2])
    decoded = DECODER.decode(data)
    assert (decoded.name, decoded.args) == ("RoundNotOpen", {"roundId": 9, "status": 2})


def test_openzeppelin_error_addresses_are_checksummed() -> None:
    account = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    data = _data("AccessControlUnauthorizedAccount(address,bytes32)", ["address", "bytes32"], [account, b"\x01" * 32])
    decoded = DECODER.decode(data)
    assert decoded.args == {"account": account, "neededRole": b"\x01" * 32}


def test_builtin_error_and_panic() -> None:
    assert DECODER.decode(_data("Error(string)", ["string"], ["boom"])).args == {"message": "boom"}
    panic = DECODER.decode(_data("Panic(uint256)", ["uint256"], [0x11]))
    assert (panic.name, panic.args) == ("Panic", {"code": 0x11})


def test_unknown_empty_and_truncated_data_do_not_raise() -> None:
    unknown = DECODER.decode(b"\xde\xad\xbe\xef\x00")
    assert (unknown.name, unknown.args["selector"]) == ("UnknownError", b"\xde\xad\xbe\xef")
    assert DECODER.decode(b"").name == "EmptyRevert"
    truncated = DECODER.decode(keccak(text="RoundNotOpen(uint64,uint8)")[:4] + b"\x00" * 5)
    assert truncated.name == "RoundNotOpen" and "undecodable" in truncated.args


def test_selector_expands_tuple_types() -> None:
    entry = {
        "name": "settleRound",
        "inputs": [
            {"type": "uint64"},
            {"type": "bytes32"},
            {"type": "bytes32"},
            {
                "type": "tuple[]",
                "components": [{"type": "address"}, {"type": "uint32"}, {"type": "uint64"}, {"type": "uint96"}],
            },
        ],
    }
    assert selector(entry) == keccak(text="settleRound(uint64,bytes32,bytes32,(address,uint32,uint64,uint96)[])")[:4]
