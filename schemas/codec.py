"""msgpack encoding of records, and decoding with validation.

    encode(record) -> bytes            {"schema": name, "v": version, **fields}
    decode(payload, Type) -> record    raises SchemaError naming the field, never anything else
    decode_any(payload) -> record      dispatch on the embedded schema name

A payload of another schema, or of a newer version than this code knows, is reported as such
rather than guessed at. An older version decodes: its record's `upgrade` adapts the fields first.
"""

from __future__ import annotations

from typing import TypeVar

import msgpack

from schemas.errors import SchemaError
from schemas.fields import build, to_dict
from schemas.limits import LIMITS, unpack_limits
from schemas.records import REGISTRY, Record

R = TypeVar("R", bound=Record)

SCHEMA_KEY, VERSION_KEY = "schema", "v"


def encode(record: Record) -> bytes:
    body = {SCHEMA_KEY: record.SCHEMA, VERSION_KEY: record.VERSION, **to_dict(record)}
    return msgpack.packb(body, use_bin_type=True)


def _unpack(payload: bytes) -> dict:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise SchemaError("<payload>", f"expected bytes, got {type(payload).__name__}")
    if len(payload) > LIMITS.max_message_bytes:
        raise SchemaError("<payload>", f"{len(payload)} bytes exceeds {LIMITS.max_message_bytes}")
    budget = _EntryBudget(LIMITS.max_decoded_entries)
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, list_hook=budget.list,
                               object_pairs_hook=budget.pairs, **UNPACK_LIMITS)
    except _TooManyEntries:
        raise SchemaError("<payload>", f"more than {LIMITS.max_decoded_entries} map and array entries") from None
    except Exception as err:  # msgpack raises several unrelated types for bad bytes
        raise SchemaError("<payload>", f"not valid msgpack ({type(err).__name__}: {err})") from None
    if not isinstance(body, dict):
        raise SchemaError("<payload>", f"expected a map, got {type(body).__name__}")
    return body


UNPACK_LIMITS = unpack_limits()


class _TooManyEntries(Exception):
    pass


class _EntryBudget:
    """Counts the entries of every array and map as msgpack completes them (innermost first) and
    stops decoding once there are more than one message can legitimately hold."""

    def __init__(self, max_entries: int):
        self.left = max_entries

    def _spend(self, n: int) -> None:
        self.left -= n + 1  # the container itself counts: an empty array is not free
        if self.left < 0:
            raise _TooManyEntries

    def list(self, items: list) -> list:
        self._spend(len(items))
        return items

    def pairs(self, pairs: list) -> dict:
        self._spend(len(pairs))
        return dict(pairs)


def _schema_of(body: dict) -> tuple[type[Record], int]:
    name, version = body.get(SCHEMA_KEY), body.get(VERSION_KEY)
    if not isinstance(name, str) or name not in REGISTRY:
        raise SchemaError(SCHEMA_KEY, f"unknown schema {name!r:.80}")
    cls = REGISTRY[name]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError(VERSION_KEY, f"invalid schema version {version!r:.40}")
    if version > cls.VERSION:
        raise SchemaError(VERSION_KEY, f"{name} version {version} is newer than supported {cls.VERSION}")
    return cls, version


def decode_any(payload: bytes) -> Record:
    body = _unpack(payload)
    cls, version = _schema_of(body)
    fields = {k: v for k, v in body.items() if k not in (SCHEMA_KEY, VERSION_KEY)}
    if version < cls.VERSION:
        fields = cls.upgrade(fields, version)
    return build(cls, fields)


def decode(payload: bytes, expected: type[R]) -> R:
    record = decode_any(payload)
    if not isinstance(record, expected):
        raise SchemaError(SCHEMA_KEY, f"expected {expected.SCHEMA}, got {record.SCHEMA}")
    return record
