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


# ------------------------------------------------------------------------------------------------ monthly --next


@pytest.mark.parametrize(
    ("names", "ingested", "expected"),
    [
        (["month_000", "month_001"], set(), "month_000"),
        (["month_001", "month_000"], {date(2024, 1, 31)}, "month_001"),  # listing order does not matter
        (["month_000", "month_001", "month_002"], {date(2024, 1, 31), date(2024, 3, 31)}, "month_001"),  # a gap
        (["month_010", "month_009"], {date(2024, 10, 31)}, "month_010"),  # by number: month_009 = 2024-10-31
        (["month_000", "notes", "month_1", "month_001.zip", "month_001"], {date(2024, 1, 31)}, "month_001"),
        (["month_000", "month_001"], {date(2024, 1, 31), date(2024, 2, 29)}, None),  # every one ingested
        (["month_000"], {date(2024, 1, 31), date(2024, 2, 29)}, None),  # more ingested than folders
        (["README.md"], set(), None),
    ],
    ids=[
        "none-ingested",
        "unsorted",
        "gap",
        "numeric-order",
        "other-names",
        "all-ingested",
        "extra-ingested",
        "no-months",
    ],
)
def test_next_month_is_the_oldest_folder_not_ingested(names: list[str], ingested: set, expected: str | None) -> None:
    from pipelines.monthly import pick_next_month

    assert pick_next_month(names, ingested) == expected


def test_next_month_takes_again_a_month_whose_monthly_run_did_not_finish() -> None:
    from pipelines.monthly import pick_next_month

    ingested = {date(2024, 1, 31), date(2024, 2, 29)}
    assert pick_next_month(["month_000", "month_001", "month_002"], ingested) == "month_002"
    assert pick_next_month(["month_000", "month_001", "month_002"], ingested, {date(2024, 2, 29)}) == "month_001"
    assert pick_next_month(["month_000", "month_001"], ingested, {date(2024, 1, 31)}) == "month_000"


def test_month_index_reads_the_folder_number() -> None:
    from pipelines.months import month_index

    names = ("month_000", "month_012", "month_1000", "month_1", "data")
    assert [month_index(n) for n in names] == [0, 12, 1000, None, None]
