"""Canonical, strict msgpack encoding of typed records.

A record is a frozen dataclass whose fields are `int`, `float`, `bool`, `str`, `bytes`
(optionally of a fixed size: `Annotated[bytes, Size(32)]`), `tuple[T, ...]`, `T | None`, or
another record. A record encodes as a msgpack array of its field values in declaration order;
a top-level message travels in an envelope `[type, version, body]`.

Guarantees:
- Canonical: the same object always encodes to the same bytes (msgpack's smallest integer
  widths, float64 only, no maps), so signatures and hashes over encodings are well defined.
- Strict: decoding accepts only bytes that re-encode to themselves. Wrong types, missing or extra
  fields, unknown types or versions, non-finite floats, oversize payloads and trailing bytes all
  raise `EncodingError` naming the field path and what came; nothing partial is ever returned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack

from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError

T = TypeVar("T")
MAX_INT = 2**64 - 1
MIN_INT = -(2**63)


@dataclass(frozen=True)
class Size:
    """Marks a `bytes` field as exactly `n` bytes long."""

    n: int


Hash32 = Annotated[bytes, Size(32)]
PublicKey32 = Annotated[bytes, Size(32)]
Signature64 = Annotated[bytes, Size(64)]


class Message:
    """Mixin for top-level wire messages: a type tag, a version, and a size limit."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]
    MAX_BYTES: ClassVar[int]


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _to_wire(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        wire = _to_wire(value, base, path)
        for m in meta:
            if isinstance(m, Size) and len(wire) != m.n:
                raise EncodingError(f"{path}: expected {m.n} bytes, got {len(wire)}")
        return wire
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _to_wire(value, inner, path)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, tuple | list):
            raise EncodingError(f"{path}: expected a tuple, got {type(value).__name__}")
        if inner in _SCALARS and _scalars_ok(value, inner):
            return list(value)  # the common case (token ids, logprobs), checked in bulk
        return [_to_wire(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if type(value) is not tp:
            raise EncodingError(f"{path}: expected {tp.__name__}, got {type(value).__name__}")
        return [_to_wire(getattr(value, n), t, f"{path}.{n}") for n, t in _field_types(tp)]
    return _check_scalar(value, tp, path)


_SCALARS = (int, float, bool, str, bytes)


def _scalars_ok(values: Any, tp: type) -> bool:
    """Fast bulk check; on False the caller re-checks element by element to name the culprit."""
    if not all(type(v) is tp for v in values):
        return False
    if tp is int:
        return not values or (min(values) >= MIN_INT and max(values) <= MAX_INT)
    if tp is float:
        return all(map(math.isfinite, values))
    return True


def _check_scalar(value: Any, tp: Any, path: str, error: type[ProtocolError] = EncodingError) -> Any:
    if tp is bool:
        if type(value) is not bool:
            raise error(f"{path}: expected bool, got {type(value).__name__}")
    elif tp is int:
        if type(value) is not int:
            raise error(f"{path}: expected int, got {type(value).__name__}")
        if not MIN_INT <= value <= MAX_INT:
            raise error(f"{path}: integer {value} is outside the 64-bit range")
    elif tp is float:
        if type(value) is not float:
            raise error(f"{path}: expected float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise error(f"{path}: expected a finite float, got {value}")
    elif tp is str:
        if type(value) is not str:
            raise error(f"{path}: expected str, got {type(value).__name__}")
    elif tp is bytes:
        if type(value) is not bytes:
            raise error(f"{path}: expected bytes, got {type(value).__name__}")
    else:
        raise error(f"{path}: type {tp!r} cannot be encoded")
    return value


class _WireForm:
    """How a decoded msgpack body holds a record: its fields as an array, bytes as bin."""

    error: type[ProtocolError] = EncodingError

    def field_values(self, wire: Any, tp: type, names: list[str], path: str) -> list:
        if type(wire) is not list:
            raise self.error(f"{path}: expected {tp.__name__} as an array, got {_wire_name(wire)}")
        if len(wire) != len(names):
            raise self.error(f"{path}: {tp.__name__} has {len(names)} fields, got {len(wire)}")
        return wire

    def scalar(self, wire: Any, tp: Any, path: str) -> Any:
        return _check_scalar(wire, tp, path, self.error)


class _JsonForm(_WireForm):
    """How JSON holds a record: its fields as an object by name, bytes as 0x-hex, 1 for 1.0."""

    def __init__(self, error: type[ProtocolError]) -> None:
        self.error = error

    def field_values(self, wire: Any, tp: type, names: list[str], path: str) -> list:
        if not isinstance(wire, Mapping):
            raise self.error(f"{path}: expected an object, got {type(wire).__name__}")
        extra = sorted(set(wire) - set(names))
        if extra:
            raise self.error(f"{path}: unknown field {extra[0]!r}")
        missing = [n for n in names if n not in wire]
        if missing:
            raise self.error(f"{path}: missing field {missing[0]!r}")
        return [wire[n] for n in names]

    def scalar(self, wire: Any, tp: Any, path: str) -> Any:
        if tp is bytes:
            if not isinstance(wire, str) or not wire.startswith("0x"):
                raise self.error(f"{path}: expected 0x-hex bytes, got {wire!r}")
            try:
                return bytes.fromhex(wire[2:])
            except ValueError as exc:
                raise self.error(f"{path}: not hex: {wire!r}") from exc
        if tp is float and type(wire) is int:  # 0 and 0.0 are the same JSON number
            wire = float(wire)
        return super().scalar(wire, tp, path)


_WIRE = _WireForm()


def _from_wire(wire: Any, tp: Any, path: str, form: _WireForm = _WIRE) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        value = _from_wire(wire, base, path, form)
        for m in meta:
            if isinstance(m, Size) and len(value) != m.n:
                raise form.error(f"{path}: expected {m.n} bytes, got {len(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if wire is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _from_wire(wire, inner, path, form)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if type(wire) is not list:
            raise form.error(f"{path}: expected an array, got {_wire_name(wire)}")
        if inner in _SCALARS and _scalars_ok(wire, inner):
            return tuple(wire)
        return tuple(_from_wire(v, inner, f"{path}[{i}]", form) for i, v in enumerate(wire))
    if dataclasses.is_dataclass(tp):
        fields = _field_types(tp)
        values = form.field_values(wire, tp, [n for n, _ in fields], path)
        kwargs = {n: _from_wire(w, t, f"{path}.{n}", form) for (n, t), w in zip(fields, values)}
        try:
            return tp(**kwargs)
        except ProtocolError as exc:
            raise form.error(f"{path}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise form.error(f"{path}: invalid {tp.__name__}: {exc}") from exc
    return form.scalar(wire, tp, path)


def _wire_name(wire: Any) -> str:
    return {list: "array", dict: "map", bytes: "bin", str: "str"}.get(type(wire), type(wire).__name__)


def record_to_json(record: Any) -> Any:
    """A record as JSON-ready values: fields as an object, bytes as 0x-hex, tuples as lists."""
    if dataclasses.is_dataclass(record):
        return {f.name: record_to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, bytes):
        return "0x" + record.hex()
    if isinstance(record, tuple):
        return [record_to_json(v) for v in record]
    return record


def record_from_json(doc: Any, expected: type[T], error: type[ProtocolError] = EncodingError) -> T:
    """The inverse of `record_to_json`, as strict as the msgpack decoder (the same walk over the
    record's types): `error` names the field path that does not map and what came there."""
    return _from_wire(doc, expected, expected.__name__, _JsonForm(error))


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False, strict_types=True)


def encode_record(record: Any) -> bytes:
    """Canonical bytes of a record with no envelope (used for hashing nested records)."""
    return _pack(_to_wire(record, type(record), type(record).__name__))


def encode_message(message: Message) -> bytes:
    cls = type(message)
    body = _to_wire(message, cls, cls.__name__)
    data = _pack([cls.TYPE, cls.VERSION, body])
    if len(data) > cls.MAX_BYTES:
        raise EncodingError(f"{cls.__name__} is {len(data)} bytes, over its limit of {cls.MAX_BYTES}")
    return data


def _unpack(data: bytes, limit: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise EncodingError(f"message is {len(data)} bytes, over the limit of {limit}")
    try:
        return msgpack.unpackb(
            bytes(data), raw=False, use_list=True, strict_map_key=True,
            max_bin_len=limit, max_str_len=limit,
            max_array_len=limit, max_map_len=0, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # msgpack raises a zoo of types on garbage (ExtraData, FormatError, StackError, ...)
        raise EncodingError(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc


def decode_message(data: bytes, expected: type[T]) -> T:
    """Decodes a message that must be of type `expected`; raises EncodingError otherwise."""
    wire = _unpack(data, expected.MAX_BYTES)
    if type(wire) is not list or len(wire) != 3:
        raise EncodingError("expected an envelope [type, version, body]")
    tag, version, body = wire
    if tag != expected.TYPE:
        raise EncodingError(f"expected a {expected.TYPE!r} message, got {tag!r}")
    if version != expected.VERSION or type(version) is not int:
        raise EncodingError(
            f"unsupported {expected.TYPE} version {version!r}; this node speaks {expected.VERSION}"
        )
    message = _from_wire(body, expected, expected.__name__)
    if encode_message(message) != bytes(data):
        raise EncodingError(f"{expected.__name__}: bytes are not the canonical encoding")
    return message


def decode_record(data: bytes, expected: type[T], limit: int) -> T:
    wire = _unpack(data, limit)
    record = _from_wire(wire, expected, expected.__name__)
    if encode_record(record) != bytes(data):
        raise EncodingError(f"{expected.__name__}: bytes are not the canonical encoding")
    return record
