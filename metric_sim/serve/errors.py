"""The errors a request can get: one class, :class:`ApiError`, carrying the HTTP status and the JSON body.

Every 4xx the server sends has the body ``{"error": {"type", "message", "field"}}``;
``type`` is a snake_case kind a client can branch on, ``field`` the JSON path of the
offending value (``"items[3].item"``) or None. A :class:`~metric_sim.errors.MetricSimError`
raised by the library for a request's input becomes a 422 through :func:`from_library_error`.
"""

from __future__ import annotations

from typing import Any

from metric_sim.errors import CalibrationError, DataError, MetricSimError

__all__ = ["ApiError", "error_body", "from_library_error", "limit_exceeded", "invalid"]


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "field": field}}


class ApiError(MetricSimError):
    """An answer other than success: ``status`` (4xx/5xx), ``kind`` (the body's ``type``), message and field."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.kind, self.message, self.field)


def invalid(field: str | None, message: str, kind: str = "invalid_argument") -> ApiError:
    """422: a value of the right shape but not acceptable (``message`` says what came and what is expected)."""
    return ApiError(422, kind, message, field)


def limit_exceeded(field: str | None, what: str, limit: int, got: int) -> ApiError:
    """413: ``what`` of ``field`` is ``got``, over ``limit`` (both named in the message)."""
    where = field if field is not None else "the request"
    return ApiError(413, "limit_exceeded", f"{where}: {what} is {got}, over the limit of {limit}", field)


def from_library_error(exc: MetricSimError, field: str | None = None) -> ApiError:
    """A library error about a request's input as a 422 (its message names what was wrong)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, CalibrationError):
        return ApiError(422, "no_calibrator", str(exc), field)
    if isinstance(exc, DataError):
        return ApiError(422, "invalid_item", str(exc), field)
    return ApiError(422, "invalid_argument", str(exc), field)
