"""Month folders and as_of dates: ``month_000`` is as_of 2024-01-31, ``month_001`` 2024-02-29, and so on."""

from __future__ import annotations

import calendar
import re
from datetime import date
from pathlib import Path

from pipelines.errors import InvalidInput

FIRST_AS_OF = date(2024, 1, 31)
_MONTH_DIR = re.compile(r"month_(\d{3,})")


def as_of_for_index(index: int) -> date:
    """The as_of of month folder number ``index`` (last day of the month, starting January 2024)."""
    year, month0 = divmod(FIRST_AS_OF.month - 1 + index, 12)
    year += FIRST_AS_OF.year
    return date(year, month0 + 1, calendar.monthrange(year, month0 + 1)[1])


def month_index(name: str) -> int | None:
    """The number of a ``month_NNN`` folder name (``month_002`` → 2); None for any other name."""
    match = _MONTH_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def month_dir_name(index: int) -> str:
    """``month_000`` for index 0."""
    return f"month_{index:03d}"


def parse_as_of(value: str | date) -> date:
    """Parse an ISO date given on the command line.

    Raises:
        InvalidInput: the text is not a YYYY-MM-DD date.
    """
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        raise InvalidInput(f"as_of {value!r} is not a date: expected YYYY-MM-DD, e.g. 2024-01-31") from None


def infer_as_of(month_dir: Path) -> date:
    """The as_of of a ``month_NNN`` folder.

    Raises:
        InvalidInput: the folder is not named ``month_NNN`` (pass ``--as-of`` then).
    """
    index = month_index(month_dir.name)
    if index is None:
        raise InvalidInput(
            f"folder {str(month_dir)!r} is not a month folder: expected a name like month_000 "
            "(month_000 = as_of 2024-01-31), or pass --as-of YYYY-MM-DD"
        )
    return as_of_for_index(index)
