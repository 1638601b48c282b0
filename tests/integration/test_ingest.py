"""Ingestion and snapshots end to end, on the embedded DuckDB default and on a real PostgreSQL server."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.db import Database, connect
from pipelines.errors import InvalidInput, NotFound, QuarantineThresholdExceeded
from pipelines.ingest import ingest_month
from pipelines.snapshot import take_snapshot
from pipelines.tables import RAW_TABLES, SNAPSHOTS

pytestmark = pytest.mark.integration

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)


def dump(db: Database) -> dict[str, pd.DataFrame]:
    """Every stored row, in a stable order, so two states compare with equals."""
    state = {}
    for table in RAW_TABLES:
        state[table.name] = db.query(f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}")
    state["quarantine"] = db.query("SELECT * FROM quarantine ORDER BY as_of, table_name, line, column_name")
    state["ingestions"] = db.query("SELECT * FROM ingestions ORDER BY as_of")
    for snap in SNAPSHOTS:
        for as_of in (JAN, FEB):
            state[f"{snap.name}@{as_of}"] = db.read_snapshot(snap, as_of)
    return state


def assert_same_state(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


@pytest.fixture
def db(settings: Settings):
    database = connect(settings)
    yield database
    database.close()


def copy_month(months_dir: Path, tmp_path: Path, index: int = 0) -> Path:
    dest = tmp_path / f"month_{index:03d}"
    shutil.copytree(months_dir / f"month_{index:03d}", dest)
    return dest


def csv_rows(path: Path) -> int:
    return len(pd.read_csv(path))


def test_generated_months_load_completely(db: Database, settings: Settings, months_dir: Path) -> None:
    for index, as_of in ((0, JAN), (1, FEB)):
        folder = months_dir / f"month_{index:03d}"
        result = ingest_month(db, settings, folder, as_of)
        assert result.quarantined == 0
        for table in RAW_TABLES:
            counts = result.tables[table.name]
            assert counts["input"] == counts["loaded"] + counts["quarantined"] == csv_rows(folder / table.file_name)
        take_snapshot(db, as_of)
    feb_users = csv_rows(months_dir / "month_001" / "users.csv")
    stored = db.query("SELECT COUNT(*) AS n FROM subscriptions WHERE as_of = ?", (FEB,))["n"].iloc[0]
    assert stored == feb_users
    for snap in SNAPSHOTS:
        frame = db.read_snapshot(snap, JAN)
        assert len(frame) == csv_rows(months_dir / "month_000" / snap.source.file_name)
        assert list(frame.columns) == list(snap.db_columns)
        assert frame["user_id"].is_unique
        assert (pd.to_datetime(frame["event_timestamp"], utc=True) == pd.Timestamp(JAN, tz="UTC")).all()


def test_empty_plans_of_no_internet_users_are_stored_as_null(
    db: Database, settings: Settings, months_dir: Path
) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    subs = db.query("SELECT net_service, plan_stream_tv, plan_stream_movies, add_on_security FROM subscriptions")
    no_internet = subs[subs["net_service"] == "No"]
    assert len(no_internet) > 0
    assert no_internet["plan_stream_tv"].isna().all() and no_internet["plan_stream_movies"].isna().all()
    assert subs.loc[subs["net_service"] != "No", "plan_stream_tv"].notna().all()
    assert subs["add_on_security"].isna().all()


def test_ingesting_the_same_month_twice_leaves_identical_tables(
    db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    month = copy_month(months_dir, tmp_path)
    with (month / "usage_agg_30d.csv").open("a") as fh:  # one bad row, so the quarantine is compared too
        fh.write(f"{pd.read_csv(month / 'users.csv')['user_id'].iloc[0]}-X,1,1,1,1,1\n")
    ingest_month(db, settings, month, JAN)
    take_snapshot(db, JAN)
    first = dump(db)
    assert len(first["quarantine"]) == 1
    ingest_month(db, settings, month, JAN)
    take_snapshot(db, JAN)
    assert_same_state(first, dump(db))


def test_february_never_changes_january_labels_or_snapshots(db: Database, settings: Settings, months_dir: Path) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    take_snapshot(db, JAN)
    jan_labels = db.query("SELECT * FROM labels WHERE as_of = ? ORDER BY user_id", (JAN,))
    jan_snaps = {s.name: db.read_snapshot(s, JAN) for s in SNAPSHOTS}
    ingest_month(db, settings, months_dir / "month_001", FEB)
    take_snapshot(db, FEB)
    take_snapshot(db, JAN)  # re-taking January after February is ingested still gives January's rows
    pd.testing.assert_frame_equal(jan_labels, db.query("SELECT * FROM labels WHERE as_of = ? ORDER BY user_id", (JAN,)))
    for snap in SNAPSHOTS:
        pd.testing.assert_frame_equal(jan_snaps[snap.name], db.read_snapshot(snap, JAN), obj=snap.name)
    both = db.query("SELECT user_id FROM labels GROUP BY user_id HAVING COUNT(*) = 2")
    assert len(both) > 0  # survivors have one label per month, not one overwritten label


BAD_MONTHS = {
    "missing file": (
        lambda m: (m / "payments_agg_90d.csv").unlink(),
        r"file\(s\) missing: payments_agg_90d.csv",
    ),
    "missing column": (
        lambda m: _rewrite(m / "usage_agg_30d.csv", lambda t: t.drop(columns=["skips_7d"])),
        r"usage_agg_30d.csv: line 1: missing column\(s\) 'skips_7d'",
    ),
    "extra column": (
        lambda m: _rewrite(m / "labels.csv", lambda t: t.assign(score=1)),
        r"labels.csv: line 1, column 3: unexpected column 'score'",
    ),
    "empty file": (
        lambda m: (m / "support_agg_90d.csv").write_text(""),
        r"support_agg_90d.csv: line 1: file is empty",
    ),
    "header only": (
        lambda m: (m / "labels.csv").write_text("user_id,churn_label\n"),
        r"labels.csv: line 2: no data rows",
    ),
    "non-UTF-8": (
        lambda m: (m / "users.csv").write_bytes((m / "users.csv").read_bytes().replace(b"Female", b"F\xe9male", 1)),
        r"users.csv: line \d+, column 'user_gender': byte 0xe9 is not UTF-8",
    ),
}


def _rewrite(path: Path, change) -> None:
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


@pytest.mark.parametrize("case", sorted(BAD_MONTHS))
def test_unusable_month_fails_clearly_and_keeps_what_was_stored(
    case: str, db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    take_snapshot(db, JAN)
    before = dump(db)
    month = copy_month(months_dir, tmp_path, index=1)
    breaker, message = BAD_MONTHS[case]
    breaker(month)
    with pytest.raises(InvalidInput, match=message):
        ingest_month(db, settings, month, FEB)
    assert_same_state(before, dump(db))


def test_bad_rows_are_quarantined_and_reported_and_good_rows_load(
    db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    month = copy_month(months_dir, tmp_path)
    usage = pd.read_csv(month / "usage_agg_30d.csv", dtype=str, keep_default_na=False)
    usage.loc[5, "skips_7d"] = "-4"  # negative count, line 7
    usage.loc[9, "unique_devices_30d"] = "many"  # text in an INT column, line 11
    usage.to_csv(month / "usage_agg_30d.csv", index=False)
    settings = settings.model_copy(update={"quarantine_max_share": 0.05})
    result = ingest_month(db, settings, month, JAN)
    assert result.tables["usage_agg_30d"]["quarantined"] == 2
    assert result.quarantined == 2
    stored = db.query("SELECT line, column_name, value, reason FROM quarantine ORDER BY line")
    assert stored.values.tolist() == [
        [7, "skips_7d", "-4", "must be >= 0"],
        [11, "unique_devices_30d", "many", "not an integer"],
    ]
    report = pd.read_csv(result.report_csv)
    assert report[["line", "column_name", "value"]].astype(str).values.tolist() == [
        ["7", "skips_7d", "-4"],
        ["11", "unique_devices_30d", "many"],
    ]
    assert result.report_json.exists()
    n = db.query("SELECT COUNT(*) AS n FROM usage_agg_30d")["n"].iloc[0]
    assert n == len(usage) - 2


def test_quarantine_over_threshold_loads_nothing_for_the_month(
    db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    before = dump(db)
    month = copy_month(months_dir, tmp_path, index=1)
    _rewrite(
        month / "payments_agg_90d.csv",
        lambda t: t.assign(failed_payments_90d=["x"] * 5 + list(t["failed_payments_90d"][5:])),
    )
    with pytest.raises(
        QuarantineThresholdExceeded,
        match=r"payments_agg_90d \d+\.\d%.*nothing of as_of 2024-02-29 was loaded",
    ):
        ingest_month(db, settings, month, FEB)
    assert_same_state(before, dump(db))
    report = settings.quarantine_dir / FEB.isoformat() / "quarantine.csv"
    assert len(pd.read_csv(report)) == 5  # the report is written so the user can see why


def test_snapshot_of_a_month_never_ingested_is_a_clear_error(
    db: Database, settings: Settings, months_dir: Path
) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    with pytest.raises(NotFound, match=r"no ingested month has as_of 2024-02-29 \(ingested: 2024-01-31\)"):
        take_snapshot(db, FEB)


def test_row_defects_in_a_later_month_are_quarantined_and_january_is_untouched(
    db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    ingest_month(db, settings, months_dir / "month_000", JAN)
    take_snapshot(db, JAN)

    def january_rows() -> dict[str, pd.DataFrame]:
        rows = {
            t.name: db.query(f"SELECT * FROM {t.name} WHERE as_of = ? ORDER BY user_id", (JAN,))
            for t in RAW_TABLES
            if t.per_month
        }
        return rows | {s.name: db.read_snapshot(s, JAN) for s in SNAPSHOTS}

    january = january_rows()
    month = copy_month(months_dir, tmp_path, index=1)
    pay = pd.read_csv(month / "payments_agg_90d.csv", dtype=str, keep_default_na=False)
    pay.loc[3, "failed_payments_90d"] = "-1"  # negative count, line 5
    pay.loc[4, "failed_payments_90d"] = "two"  # text in an INT column, line 6
    pay = pd.concat([pay, pay.iloc[[0]], pd.DataFrame({"user_id": ["0000-NOONE"], "failed_payments_90d": ["0"]})])
    pay.to_csv(month / "payments_agg_90d.csv", index=False)  # + a duplicate of line 2 and an unknown user
    settings = settings.model_copy(update={"quarantine_max_share": 0.05})
    result = ingest_month(db, settings, month, FEB)
    counts = result.tables["payments_agg_90d"]
    assert counts == {"input": len(pay), "loaded": len(pay) - 5, "quarantined": 5}
    q = db.query("SELECT line, column_name, value, reason FROM quarantine WHERE as_of = ? ORDER BY line", (FEB,))
    n = len(pay) + 1  # last physical line
    assert q.values.tolist() == [
        [2, "user_id", pay.iloc[0]["user_id"], "duplicate user_id in this file"],
        [5, "failed_payments_90d", "-1", "must be >= 0"],
        [6, "failed_payments_90d", "two", "not an integer"],
        [n - 1, "user_id", pay.iloc[0]["user_id"], "duplicate user_id in this file"],
        [n, "user_id", "0000-NOONE", "unknown user_id (not in users)"],
    ]
    assert_same_state(january, january_rows())


def test_crlf_quoted_commas_and_boolean_spellings_load_on_both_backends(
    db: Database, settings: Settings, months_dir: Path, tmp_path: Path
) -> None:
    month = copy_month(months_dir, tmp_path)
    users = pd.read_csv(month / "users.csv", dtype=str, keep_default_na=False)
    users.loc[0, "user_gender"] = "Female, self-described"
    users["has_family"] = users["has_family"].map({"True": "yes", "False": "NO"})
    users["has_dependents"] = users["has_dependents"].map({"True": "1", "False": "0"})
    users.to_csv(month / "users.csv", index=False, lineterminator="\r\n")
    for name in ("subscriptions.csv", "labels.csv"):
        path = month / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    result = ingest_month(db, settings, month, JAN)
    assert result.quarantined == 0
    stored = db.query(
        "SELECT user_gender, has_family, has_dependents FROM users WHERE user_id = ?", (users.loc[0, "user_id"],)
    )
    assert stored.loc[0, "user_gender"] == "Female, self-described"
    assert bool(stored.loc[0, "has_family"]) == (users.loc[0, "has_family"] == "yes")
    assert bool(stored.loc[0, "has_dependents"]) == (users.loc[0, "has_dependents"] == "1")
    labels = db.query("SELECT churn_label FROM labels")
    assert len(labels) == len(users) and labels["churn_label"].notna().all()
