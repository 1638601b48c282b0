"""Row and file validation of one CSV, on small hand-written files (the contract's real-folder details)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.errors import InvalidInput
from pipelines.tables import LABELS, SUBSCRIPTIONS, USAGE, USERS
from pipelines.validate import validate_table

AS_OF = date(2024, 1, 31)
KNOWN = pd.Index(["7590-VHVEG", "5575-GNVDE", "3668-QPYBK"])
SUBS_HEADER = (
    "user_id,months_active,plan_stream_tv,plan_stream_movies,contract_type,"
    "paperless_billing,monthly_fee,total_paid,net_service"
)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def reasons(result) -> list[tuple[int, str | None, str, str]]:
    q = result.quarantine
    return list(zip(q["line"], q["column_name"], q["value"], q["reason"], strict=True))


def test_course_subscriptions_without_add_ons_and_empty_plans_for_no_internet_load_clean(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "subscriptions.csv",
        f"{SUBS_HEADER}\n"
        "7590-VHVEG,1,False,True,Month-to-month,True,29.85,29.85,DSL\n"
        "5575-GNVDE,34,,,One year,False,19.95,678.3,No\n"
        "3668-QPYBK,2,true,FALSE,Two year,yes,24.483650766787413,49.1,Fiber optic\n",
    )
    result = validate_table(path, SUBSCRIPTIONS, AS_OF, KNOWN)
    assert result.quarantined_rows == 0 and result.loaded_rows == 3
    no_internet = result.valid.set_index("user_id").loc["5575-GNVDE"]
    assert pd.isna(no_internet["plan_stream_tv"]) and pd.isna(no_internet["plan_stream_movies"])
    assert pd.isna(no_internet["add_on_security"])  # absent column loads as NULL
    assert result.valid.set_index("user_id").loc["3668-QPYBK", "monthly_fee"] == pytest.approx(24.483650766787413)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("True", True),
        ("False", False),
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("Yes", True),
        ("nO", False),
    ],
)
def test_booleans_parse_in_every_contract_spelling(tmp_path: Path, token: str, expected: bool) -> None:
    path = write(tmp_path, "labels.csv", f"user_id,churn_label\n7590-VHVEG,{token}\n")
    result = validate_table(path, LABELS, AS_OF, KNOWN)
    assert result.quarantined_rows == 0
    assert bool(result.valid.loc[0, "churn_label"]) is expected


def test_bad_rows_are_quarantined_with_line_column_value_and_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "usage_agg_30d.csv",
        "user_id,watch_hours_30d,avg_session_mins_7d,unique_devices_30d,skips_7d,rebuffer_events_7d\n"
        "7590-VHVEG,10.5,20,2,3,1\n"
        "5575-GNVDE,abc,20,2,3,1\n"  # line 3: text in a NUMERIC column
        "3668-QPYBK,1.0,20,two,-3,1\n"  # line 4: text in INT and a negative count
        "9999-ZZZZZ,1.0,20,2,3,1\n",  # line 5: unknown user
    )
    result = validate_table(path, USAGE, AS_OF, KNOWN)
    assert result.input_rows == 4 and result.loaded_rows == 1 and result.quarantined_rows == 3
    assert reasons(result) == [
        (3, "watch_hours_30d", "abc", "not a number"),
        (4, "skips_7d", "-3", "must be >= 0"),
        (4, "unique_devices_30d", "two", "not an integer"),
        (5, "user_id", "9999-ZZZZZ", "unknown user_id (not in users)"),
    ]
    assert set(result.quarantine["file"]) == {str(path)}
    assert result.quarantine.loc[0, "raw_row"] == "5575-GNVDE,abc,20,2,3,1"


def test_duplicate_user_id_quarantines_every_occurrence(tmp_path: Path) -> None:
    path = write(tmp_path, "labels.csv", "user_id,churn_label\n7590-VHVEG,True\n5575-GNVDE,False\n7590-VHVEG,False\n")
    result = validate_table(path, LABELS, AS_OF, KNOWN)
    assert result.loaded_rows == 1
    assert [(line, reason) for line, _, _, reason in reasons(result)] == [
        (2, "duplicate user_id in this file"),
        (4, "duplicate user_id in this file"),
    ]


def test_unknown_category_and_empty_value_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "subscriptions.csv",
        f"{SUBS_HEADER}\n"
        "7590-VHVEG,1,False,True,Weekly,True,29.85,29.85,DSL\n"
        "5575-GNVDE,34,False,False,One year,,19.95,678.3,Satellite\n",
    )
    result = validate_table(path, SUBSCRIPTIONS, AS_OF, KNOWN)
    got = {(line, col, value): reason for line, col, value, reason in reasons(result)}
    assert got[(2, "contract_type", "Weekly")].startswith("unknown category (expected one of Month-to-month")
    assert got[(3, "net_service", "Satellite")].startswith("unknown category")
    assert got[(3, "paperless_billing", "")] == "empty value"


def test_fee_must_be_positive_and_dates_iso_and_not_after_as_of(tmp_path: Path) -> None:
    users = write(
        tmp_path,
        "users.csv",
        "user_id,signup_date,user_gender,user_is_senior,has_family,has_dependents\n"
        "7590-VHVEG,2022-02-05,Female,False,True,False\n"
        "5575-GNVDE,05/02/2022,Male,False,False,False\n"
        "3668-QPYBK,2024-03-01,Male,False,False,False\n",
    )
    result = validate_table(users, USERS, AS_OF, None)
    got = [(line, col, reason) for line, col, _, reason in reasons(result)]
    assert got == [
        (3, "signup_date", "not a date (YYYY-MM-DD)"),
        (4, "signup_date", "date after the month's as_of 2024-01-31"),
    ]
    subs = write(tmp_path, "subscriptions.csv", f"{SUBS_HEADER}\n7590-VHVEG,1,False,True,One year,True,0,0,DSL\n")
    assert reasons(validate_table(subs, SUBSCRIPTIONS, AS_OF, KNOWN)) == [(2, "monthly_fee", "0", "must be > 0")]


def test_crlf_quoted_comma_bom_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "\ufeffuser_id,signup_date,user_gender,user_is_senior,has_family,has_dependents\r\n"
        '7590-VHVEG,2022-02-05,"Female, self-described",False,True,False\r\n'
        "\r\n"
        "5575-GNVDE,2022-02-05,Male,maybe,False,False\r\n"
    )
    result = validate_table(write(tmp_path, "users.csv", text), USERS, AS_OF, None)
    assert result.valid.loc[0, "user_gender"] == "Female, self-described"
    assert result.valid.loc[0, "has_dependents"] is False or bool(result.valid.loc[0, "has_dependents"]) is False
    # the blank line 3 still counts: the bad row is reported at its physical line 4
    assert reasons(result) == [(4, "user_is_senior", "maybe", "not a boolean")]


def test_row_with_wrong_number_of_fields_is_quarantined(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "labels.csv",
        "user_id,churn_label\n7590-VHVEG,True\n5575-GNVDE,False,extra\n3668-QPYBK,True\n",
    )
    result = validate_table(path, LABELS, AS_OF, KNOWN)
    assert result.loaded_rows == 2 and result.input_rows == 3
    assert reasons(result) == [(3, None, "5575-GNVDE,False,extra", "expected 2 fields, found 3")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"labels.csv: line 1: file is empty"),
        (b"user_id,churn_label\n", r"labels.csv: line 2: no data rows \(the file has a header only\)"),
        (b"user_id\n7590-VHVEG\n", r"labels.csv: line 1: missing column\(s\) 'churn_label'"),
        (
            b"user_id,churn_label,score\n7590-VHVEG,True,1\n",
            r"labels.csv: line 1, column 3: unexpected column 'score'",
        ),
        (
            b"user_id,churn_label\n7590-VHVEG,True\n5575-GNVD\xe9,False\n",
            r"labels.csv: line 3, column 'user_id': byte 0xe9 is not UTF-8",
        ),
        (
            b"user_id,churn_label\n7590-VHVEG,Tru\xffe\n",
            r"labels.csv: line 2, column 'churn_label': byte 0xff is not UTF-8",
        ),
    ],
)
def test_unusable_files_fail_naming_file_line_and_column(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_table(write(tmp_path, "labels.csv", content), LABELS, AS_OF, KNOWN)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"labels.csv: file is missing"):
        validate_table(tmp_path / "labels.csv", LABELS, AS_OF, KNOWN)
