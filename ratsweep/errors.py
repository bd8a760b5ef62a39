"""ratsweep's errors, in one place, and the exit code each ends the CLI with (docs/sweeps.md: Exit codes).

A UserError is a mistake in what the user asked for, or in their surroundings, found before anything
started or changed: the CLI prints it as one line per mistake and exits with EXIT_BAD_INPUT. The
others end a trial, not the CLI: the sweep records them on the trial's run and goes on. (The rational
package keeps its own KernelError: it knows nothing of the rest of ratsweep.)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # `ratsweep sync`: some MLflow writes wait still; `ratsweep check`: a kernel is broken or missing
EXIT_BAD_INPUT = 2  # a UserError
EXIT_TRIALS_FAILED = 3  # `ratsweep run`: the sweeps ran, but some trials failed or diverged
# interrupted `ratsweep run`: 128 + the signal (130 SIGINT, 143 SIGTERM)


class UserError(ValueError):
    """A mistake in what the user asked for: the CLI prints it as one line and exits with EXIT_BAD_INPUT."""


class ConfigError(UserError):
    """A config value is missing, unknown or of the wrong type; `key` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class SpaceError(UserError):
    """A search-space file is invalid; the message is one line per mistake: file, key, what was expected."""


class NotFound(UserError):
    """No such MLflow experiment, or no finished trials in it."""


class DataError(UserError):
    """A dataset is missing or unreadable; the message (one line) says how to get it. Retrying a
    trial cannot fix it, so it is recorded FAILED at once, and a sweep checks first (registry datasets)."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the trial stops and is recorded FAILED with this reason."""


class MissingMetric(RuntimeError):
    """A report without the sweep's metric: the experiment does not report it (retrying cannot help)."""
