"""Field specifications: how each record field is validated, and how it maps to msgpack.

A spec is attached to a dataclass field through `metadata={"spec": ...}`. `check(value, path)`
turns an incoming Python or wire value into the record's value (or raises SchemaError naming
`path`); `dump(value)` turns the record's value into what msgpack writes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from schemas.errors import SchemaError


def _type_name(value: Any) -> str:
    return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base spec; `optional` accepts None (and a missing key, which becomes the default)."""

    optional: bool = False

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            if self.optional:
                return None
            raise SchemaError(path, "is required")
        return self.check_present(value, path)

    def check_present(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


@dataclasses.dataclass(frozen=True)
class Str(Spec):
    max_len: int = 128
    min_len: int = 1
    pattern: str | None = None

    def check_present(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {_type_name(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(path, f"length {len(value)} outside [{self.min_len}, {self.max_len}]")
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise SchemaError(path, f"does not match {self.pattern!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Id(Str):
    """An identifier: printable characters only (no newline, tab or other control or separator
    character that could forge log lines or hide in keys), bounded length."""

    def check_present(self, value: Any, path: str) -> str:
        value = super().check_present(value, path)
        if not value.isprintable():
            raise SchemaError(path, "must be printable characters (no control characters or line breaks)")
        return value


@dataclasses.dataclass(frozen=True)
class Choice(Spec):
    choices: tuple[str, ...] = ()

    def check_present(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise SchemaError(path, f"expected one of {list(self.choices)}, got {value!r:.60}")
        return value


@dataclasses.dataclass(frozen=True)
class Int(Spec):
    lo: int = 0
    hi: int = 2**63 - 1

    def check_present(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise SchemaError(path, f"expected an integer, got {_type_name(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(path, f"{value} outside [{self.lo}, {self.hi}]")
        return int(value)


@dataclasses.dataclass(frozen=True)
class Float(Spec):
    lo: float = -math.inf
    hi: float = math.inf

    def check_present(self, value: Any, path: str) -> float:
        if type(value) is float and math.isfinite(value) and self.lo <= value <= self.hi:
            return value  # the common case, without the checks below
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            raise SchemaError(path, f"expected a number, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise SchemaError(path, "must be finite")
        if not self.lo <= value <= self.hi:
            raise SchemaError(path, f"{value} outside [{self.lo}, {self.hi}]")
        return value


@dataclasses.dataclass(frozen=True)
class Bytes(Spec):
    max_len: int = 1024
    min_len: int = 1

    def check_present(self, value: Any, path: str) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise SchemaError(path, f"expected bytes, got {_type_name(value)}")
        value = bytes(value)
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(path, f"size {len(value)} bytes outside [{self.min_len}, {self.max_len}]")
        return value


@dataclasses.dataclass(frozen=True)
class Vector(Spec):
    """A float32 vector: numpy in records, little-endian float32 bytes on the wire."""

    max_dim: int = 4096

    def check_present(self, value: Any, path: str) -> np.ndarray:
        if isinstance(value, bytes | bytearray | memoryview):
            if len(value) % 4:
                raise SchemaError(path, f"{len(value)} bytes is not a whole number of float32")
            array = np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)
        elif isinstance(value, np.ndarray | list | tuple):
            try:
                array = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise SchemaError(path, f"not a numeric vector ({err})") from None
        else:
            raise SchemaError(path, f"expected float32 bytes or an array, got {_type_name(value)}")
        if array.ndim != 1 or not 1 <= array.shape[0] <= self.max_dim:
            raise SchemaError(path, f"shape {array.shape} is not a vector of 1..{self.max_dim} floats")
        if not np.isfinite(array).all():
            raise SchemaError(path, "contains NaN or infinity")
        array.setflags(write=False)
        return array

    def dump(self, value: np.ndarray) -> bytes:
        return value.astype("<f4").tobytes()


@dataclasses.dataclass(frozen=True)
class List(Spec):
    item: Spec = dataclasses.field(default_factory=Str)
    max_items: int = 100
    min_items: int = 0

    def check_present(self, value: Any, path: str) -> tuple:
        if not isinstance(value, list | tuple):
            raise SchemaError(path, f"expected a list, got {_type_name(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            raise SchemaError(path, f"{len(value)} items outside [{self.min_items}, {self.max_items}]")
        check = self.item.check
        try:
            return tuple([check(v, path) for v in value])
        except SchemaError:  # find the first bad item again, this time naming it by its index
            for i, v in enumerate(value):
                check(v, f"{path}[{i}]")
            raise

    def dump(self, value: Sequence) -> list:
        return [self.item.dump(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Map(Spec):
    """A small str -> float map (metrics)."""

    max_items: int = 64

    def check_present(self, value: Any, path: str) -> dict[str, float]:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a map, got {_type_name(value)}")
        if len(value) > self.max_items:
            raise SchemaError(path, f"{len(value)} entries, at most {self.max_items}")
        key_spec, value_spec = Str(max_len=128), Float()
        return {key_spec.check(k, f"{path}.<key>"): value_spec.check(v, f"{path}.{k}") for k, v in value.items()}

    def dump(self, value: dict) -> dict:
        return dict(value)


@dataclasses.dataclass(frozen=True)
class Nested(Spec):
    """A nested record (dict on the wire)."""

    factory: Callable[..., Any] | None = None

    def check_present(self, value: Any, path: str) -> Any:
        cls = self.factory
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a map, got {_type_name(value)}")
        return build(cls, value, f"{path}.")

    def dump(self, value: Any) -> dict:
        return to_dict(value)


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata["spec"]


@functools.cache
def field_specs(cls: type) -> tuple[tuple[str, Spec], ...]:
    """(name, spec) of every field of a record class, read once per class: validation runs on every
    record built, a hundred times per re-rank request (its candidates)."""
    return tuple((f.name, spec_of(f)) for f in dataclasses.fields(cls))


@functools.cache
def field_names(cls: type) -> tuple[frozenset[str], tuple[str, ...]]:
    """All field names of a record class, and the required ones (no default) in field order."""
    fields = dataclasses.fields(cls)
    return (frozenset(f.name for f in fields),
            tuple(f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING))


def field(spec: Spec, *, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its spec; optional specs default to None."""
    if default is dataclasses.MISSING and spec.optional:
        default = None
    return dataclasses.field(default=default, metadata={"spec": spec})


def validate_fields(record: Any, path: str = "") -> None:
    """Check and normalise every field of a frozen dataclass in place (from __post_init__)."""
    for name, spec in field_specs(type(record)):
        object.__setattr__(record, name, spec.check(getattr(record, name), f"{path}{name}" if path else name))


def build(cls: type, data: dict, path: str = "") -> Any:
    """Construct `cls` from a wire dict, rejecting unknown keys; errors carry the full field path."""
    names, required = field_names(cls)
    if not names.issuperset(data):
        unknown = sorted(_loggable(str(k)[:64]) for k in data if k not in names)  # a hostile key can be megabytes
        raise SchemaError(f"{path}{unknown[0]}", "unknown field")
    for name in required:
        if name not in data:
            raise SchemaError(f"{path}{name}", "is required")
    try:
        return cls(**data)
    except SchemaError as err:
        if path and not err.field.startswith(path):
            raise SchemaError(f"{path}{err.field}", err.reason) from None
        raise


def _loggable(name: str) -> str:
    return name if name.isprintable() else repr(name)


def to_dict(record: Any) -> dict:
    return {name: spec.dump(v) for name, spec in field_specs(type(record))
            if (v := getattr(record, name)) is not None}
