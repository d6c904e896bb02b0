"""Every error metric-sim raises on purpose, under one root: :class:`MetricSimError`.

Each class also keeps the builtin base it had before the root existed (``ValueError``,
``TypeError``, ``OSError``, ``FileNotFoundError``), so ``except ValueError`` code keeps
working. The CLI tells the two families apart: a ``MetricSimError`` is the user's input
(exit code 2, with the message), anything else is a bug (exit code 1, with a hint to
rerun with ``-v`` for the traceback).

This module is the bottom of the package: it imports nothing from metric-sim.
"""

from __future__ import annotations

import os

__all__ = [
    "CalibrationError",
    "ConfigError",
    "DataError",
    "EncoderLoadError",
    "ExportError",
    "IndexConfigError",
    "IndexLoadError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "MetricSimError",
    "MissingFileError",
    "OnnxModelError",
    "AuthenticationError",
    "ServiceError",
    "ServiceUnavailableError",
    "ShardError",
    "TargetExistsError",
    "TrainingError",
    "UnknownIdError",
    "UsageError",
]


class MetricSimError(Exception):
    """Root of every error metric-sim raises about its input: catch this to catch them all."""


class InvalidArgumentError(MetricSimError, ValueError):
    """An argument has a value outside what the function accepts; the message names both."""


class InvalidArgumentTypeError(MetricSimError, TypeError):
    """An argument has the wrong type; the message names the argument and the type received."""


class MissingFileError(MetricSimError, FileNotFoundError):
    """A file or folder the caller named does not exist."""


class TargetExistsError(MetricSimError, FileExistsError):
    """A save would replace something that is not the kind of folder it writes."""


class UsageError(MetricSimError, ValueError):
    """Command-line arguments that argparse accepts but that do not make sense together."""


class ConfigError(MetricSimError, ValueError):
    """A recipe, ``--set`` override or saved JSON config is unreadable or invalid; names the file."""


class DataError(MetricSimError, ValueError):
    """Bad input file or row.

    ``str()`` reads ``"data.tsv, line 17, column 'label': label must be 0 or 1, got '2'"``:
    the source, the 1-based line (``unit="row"`` for parquet / ``datasets`` rows) and the
    column when known. ``kind`` is one of ``metric_sim.data.report.BAD_ROW_KINDS`` for row-level
    problems.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | os.PathLike | None = None,
        line: int | None = None,
        column: str | int | None = None,
        unit: str = "line",
        kind: str | None = None,
    ) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        self.line = line
        self.column = column
        self.unit = unit
        self.kind = kind
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if self.line is not None:
            parts.append(f"{self.unit} {self.line}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        prefix = ", ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):  # keep the keyword-only attributes through pickling (multiprocessing)
        return (self.__class__, (self.message,), dict(self.__dict__))


class EncoderLoadError(MetricSimError, OSError):
    """The encoder could not be loaded; the message says from where and what to do."""


class OnnxModelError(EncoderLoadError):
    """An exported folder has no usable ONNX model; the message says what is missing."""


class CalibrationError(MetricSimError, ValueError):
    """The calibration data cannot give a meaningful distance threshold."""


class TrainingError(MetricSimError, ValueError):
    """A training run cannot start or continue; the message says why and what to change."""


class IndexConfigError(MetricSimError, ValueError):
    """An index kind, parameter or metric combination that FAISS cannot serve correctly."""


class IndexLoadError(MetricSimError, ValueError):
    """A saved index folder is missing, damaged or belongs to another encoder/metric."""


class ShardError(MetricSimError, ValueError):
    """A work folder or shard that belongs to another corpus/model/plan, or a shard that is missing."""


class ExportError(MetricSimError, ValueError):
    """An export that cannot be written, or whose graph does not reproduce the model."""


class ServiceError(MetricSimError):
    """The service answered with an error the library has no closer class for (e.g. a 500)."""

    status_code: int | None = None  # set on errors made from a reply; None for connection failures
    error_type: str | None = None
    field: str | None = None

    def __str__(self) -> str:  # KeyError subclasses would otherwise show the repr of the message
        return str(self.args[0]) if self.args else ""


class ServiceUnavailableError(ServiceError, ConnectionError):
    """The service cannot be reached, timed out, or is not ready yet (503)."""


class AuthenticationError(ServiceError, PermissionError):
    """The service refused the bearer token (401/403): pass ``api_key`` / ``write_api_key``."""


class UnknownIdError(ServiceError, KeyError):
    """No stored item has this id (404); a ``KeyError`` like the library's ``NeighborIndex.remove``."""
