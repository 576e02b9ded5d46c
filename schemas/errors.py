"""The one error type for records that cannot be decoded or validated."""

from __future__ import annotations

MAX_ERROR_LEN = 300  # = schemas.limits.LIMITS.max_error_len (not imported: limits may import this)


def shorten(text: str, limit: int = MAX_ERROR_LEN) -> str:
    """`text` cut to `limit` characters, marked as cut: a field name or reason from a hostile record
    can be megabytes long, and it ends up in logs and dead letters."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more]"


class SchemaError(ValueError):
    """A record failed to decode or validate. `field` names the offending field (dotted path);
    both it and `reason` are cut to MAX_ERROR_LEN characters."""

    def __init__(self, field: str, reason: str):
        self.field = shorten(field)
        self.reason = shorten(reason)
        super().__init__(f"{self.field}: {self.reason}")
