"""Random, truncated or mistyped payloads give SchemaError, never any other exception."""

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, decode_any, encode
from schemas.errors import SchemaError
from schemas.records import REGISTRY
from tests.schemas.test_records import EXAMPLES

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _decodes_or_schema_error(payload: bytes) -> None:
    try:
        decode_any(payload)
    except SchemaError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_schema_error(payload):
    _decodes_or_schema_error(payload)


@FAST
@given(st.sampled_from(EXAMPLES), st.data())
def test_truncated_records_give_schema_error(record, data):
    payload = encode(record)
    cut = data.draw(st.integers(0, len(payload) - 1))
    try:
        decode(payload[:cut], type(record))
    except SchemaError:
        return
    raise AssertionError("a truncated payload decoded")


@FAST
@given(st.sampled_from(EXAMPLES), st.data())
def test_any_field_replaced_by_a_wrong_value_gives_schema_error_or_valid_record(record, data):
    body = msgpack.unpackb(encode(record))
    name = data.draw(st.sampled_from(sorted(k for k in body if k not in ("schema", "v"))))
    body[name] = data.draw(wire_values)
    try:
        decoded = decode(msgpack.packb(body, use_bin_type=True), type(record))
    except SchemaError as err:
        assert err.field.split(".")[0].split("[")[0] in (name, "<payload>", "rating", "image_uri")
    else:
        assert isinstance(decoded, type(record))


@FAST
@given(st.sampled_from(sorted(REGISTRY)), st.dictionaries(st.text(max_size=10), wire_values, max_size=6))
def test_random_maps_under_a_known_schema_give_schema_error(schema, body):
    body.update({"schema": schema, "v": 1})
    _decodes_or_schema_error(msgpack.packb(body, use_bin_type=True))
