"""Size and range limits enforced on every record, on construction and on decode.

They bound what one message can make a worker allocate: image bytes, history length, string
lengths, vector dimension. The message-size limit on the Kafka clients follows `max_message_bytes`.
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
    max_metrics: int = 64
    min_time_ms: int = 0
    max_time_ms: int = 32503680000000  # year 3000


LIMITS = Limits()
