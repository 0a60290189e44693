"""The project's own error types: bad input, or a state the user can fix.

``python -m lsq`` prints any :class:`LsqError` as one ``error:`` line naming the problem and the
fix, and exits 2. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class LsqError(Exception):
    """Base of every error the CLI reports as one line."""


class ConfigError(LsqError, ValueError):
    """A bad configuration value, key, name or argument; the message names it and the fix."""


class DataError(LsqError, ValueError):
    """A dataset file that is there but cannot be used (wrong format, truncated)."""


class DatasetNotFoundError(LsqError, FileNotFoundError):
    """A dataset that is not where training expects it; the message says how to get it."""


class ExportError(LsqError, ValueError):
    """A run or file that cannot be exported or loaded as an export."""


class TrainingError(LsqError, RuntimeError):
    """A run cannot go on; the message says why and what to do."""


class BaselineMissingError(TrainingError):
    """A quantized row's float baseline has not been trained."""


class NonFiniteLossError(TrainingError):
    """The training or test loss became NaN or infinite: the run diverged.

    ``epoch`` (1-based, the epoch being trained), ``step`` (1-based within it; None when the
    test loss was the first non-finite number) and ``layer`` (the first module whose output is
    not finite, where found) say where; ``epoch`` is None when the model was non-finite before
    any step, which is not a divergence of this run."""

    def __init__(self, message: str, *, epoch: int | None = None, step: int | None = None,
                 layer: str | None = None):
        super().__init__(message)
        self.epoch, self.step, self.layer = epoch, step, layer


class CorruptCheckpointError(TrainingError):
    """A checkpoint that cannot be read."""


class RunFileError(LsqError, ValueError):
    """A file of a run directory that cannot be read (``summary.json``, ``metrics.jsonl``)."""


class NonFiniteValueError(LsqError, ValueError):
    """A NaN or infinity on its way into a JSON file: strict JSON has no such values."""


class DiskFullError(LsqError, OSError):
    """A write failed because its disk is full; the file it replaces is intact."""


class RunLockedError(LsqError, RuntimeError):
    """Another process is training this run."""


class BaselineFailedError(LsqError, RuntimeError):
    """The run waited for stopped without finishing, or never started."""


class WeightsNotFoundError(LsqError, FileNotFoundError):
    """A pretrained weights file that is not where it was said to be."""
