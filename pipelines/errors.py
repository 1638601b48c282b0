"""Errors of the pipeline steps.

Every error the CLI can show derives from :class:`StreamflowError`. Each class knows its process exit code
(the CLI contract: 2 for bad input, 1 for everything else) so the CLI maps errors to codes in one place.
"""

from __future__ import annotations


class StreamflowError(Exception):
    """A failure the user can act on; its message is shown as is."""

    exit_code = 1


class InvalidInput(StreamflowError):
    """The input (a file, a folder, an argument) is wrong: nothing was changed."""

    exit_code = 2


class QuarantineThresholdExceeded(InvalidInput):
    """Too many rows of a month failed validation: the month was not loaded."""


class NotFound(StreamflowError):
    """Something the step needs does not exist yet (e.g. a snapshot that was never taken)."""

    exit_code = 2
