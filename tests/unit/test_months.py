from datetime import date
from pathlib import Path

import pytest

from pipelines.errors import InvalidInput
from pipelines.months import as_of_for_index, infer_as_of, month_dir_name, parse_as_of


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, date(2024, 1, 31)),
        (1, date(2024, 2, 29)),
        (2, date(2024, 3, 31)),
        (11, date(2024, 12, 31)),
        (13, date(2025, 2, 28)),
    ],
)
def test_month_index_maps_to_last_day_of_month(index: int, expected: date) -> None:
    assert as_of_for_index(index) == expected
    assert infer_as_of(Path("/data") / month_dir_name(index)) == expected


@pytest.mark.parametrize("name", ["january", "month_1", "month_00a", "data"])
def test_folder_that_is_not_a_month_is_refused_with_its_name(name: str) -> None:
    with pytest.raises(InvalidInput, match=name) as err:
        infer_as_of(Path("/data") / name)
    assert "--as-of" in str(err.value)


@pytest.mark.parametrize("text", ["2024-13-01", "yesterday", "31/01/2024", ""])
def test_as_of_that_is_not_a_date_names_the_value(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a date") as err:
        parse_as_of(text)
    assert repr(text) in str(err.value)


def test_as_of_parses_iso() -> None:
    assert parse_as_of(" 2024-02-29 ") == date(2024, 2, 29)
