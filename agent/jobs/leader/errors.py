"""The leader's refusal of an operator's request."""

from __future__ import annotations

__all__ = ["JobError"]


class JobError(Exception):
    """A request the leader refuses; the message is one line naming what to fix."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code  # "invalid", "not_found", "exists", "unavailable"
