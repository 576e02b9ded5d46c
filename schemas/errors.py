"""The one error type for records that cannot be decoded or validated."""

from __future__ import annotations


class SchemaError(ValueError):
    """A record failed to decode or validate. `field` names the offending field (dotted path)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
