"""User-facing errors.

Every predictable user mistake raises a subclass of :class:`EOJepaError` whose message is
one sentence naming the bad input and the fix. The CLI prints that sentence (no traceback)
and exits with status 2; library users catch the class they care about.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EOJepaError(Exception):
    """Base class for errors caused by user input or environment (not bugs)."""


class ConfigError(EOJepaError, ValueError):
    """A config file, key or value is invalid."""


class MissingNormStatsError(ConfigError):
    """Normalisation statistics lack some of the bands asked for (e.g. a checkpoint given new bands)."""


class NotBuiltYetError(EOJepaError, NotImplementedError):
    """A feature is planned but not implemented in this version."""


class ModelNotFoundError(EOJepaError, KeyError):
    """An unknown model name or path."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BandMismatchError(EOJepaError, ValueError):
    """Input bands do not match what a model or dataset expects."""


class CheckpointError(EOJepaError, ValueError):
    """A checkpoint is corrupt, tampered with, unsafe or of an unknown format."""


class StacError(EOJepaError, RuntimeError):
    """A STAC search failed (unreachable API, server error, empty result)."""


class DiskFullError(EOJepaError, OSError):
    """An output could not be written: the disk (or quota) is full; the previous file is kept."""


class DataError(EOJepaError, ValueError):
    """A dataset, raster or AOI file is missing, corrupt or inconsistent."""


class MissingExtraError(EOJepaError, ImportError):
    """An optional feature's packages are not installed (the message names the extra to install)."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest match to ``name`` among ``choices`` (for 'did you mean' hints), or None."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A hint like `` Did you mean 'x'?`` or an empty string."""
    match = closest(name, choices)
    return f" Did you mean {match!r}?" if match else ""


class ClusterError(EOJepaError, RuntimeError):
    """A compute cluster (a Dask scheduler) could not be reached or was lost mid-run."""
