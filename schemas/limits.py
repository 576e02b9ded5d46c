"""Size and range limits enforced on every record, on construction and on decode.

They bound what one message can make a worker allocate: image bytes, history length, string
lengths, vector dimension, and the msgpack decoder's own allocations (`unpack_limits`). The
message-size limit on the Kafka clients follows `max_message_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    max_id_len: int = 128
    max_title_len: int = 512
    max_text_len: int = 8192
    max_uri_len: int = 2048
    max_reason_len: int = 4096
    max_history_len: int = 512
    max_candidates: int = 1000
    max_vector_dim: int = 4096
    # an ItemEmbedding's L2 norm (computed in float64) must lie in this range: encoders publish unit
    # vectors; a zero or denormal one cannot be normalised by the index, and a huge one overflows
    # the index's float32 norm to inf (and is stored as zeros)
    min_vector_norm: float = 1e-6
    max_vector_norm: float = 1e6
    # decoding: entries of all maps and arrays of one message together (a RerankRequest at its
    # limits has about 5,100), so nested empty arrays cannot make an 8 MB message cost 580 MB
    max_decoded_entries: int = 8192
    max_metrics: int = 64
    min_time_ms: int = 0
    max_time_ms: int = 32503680000000  # year 3000


LIMITS = Limits()


def unpack_limits(limits: Limits = LIMITS) -> dict[str, int]:
    """msgpack.unpackb keyword limits that match the record limits (strings are counted in bytes)."""
    longest_str = max(limits.max_text_len, limits.max_uri_len, limits.max_reason_len, limits.max_title_len)
    return {
        "max_str_len": 4 * longest_str,  # UTF-8: at most 4 bytes per character
        "max_bin_len": limits.max_message_bytes,  # DeadLetter.raw
        "max_array_len": max(limits.max_candidates, limits.max_history_len),
        "max_map_len": limits.max_metrics + 16,  # the metrics map, or a record's own fields
        "max_ext_len": 0,
    }
