"""The synthetic data generator: contract format, realism (churn rate, learnable but not trivial), evolution,
determinism and each drift knob."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from pipelines.errors import InvalidInput
from pipelines.generate import DriftSpec, generate, parse_drift
from pipelines.tables import CONTRACT_TYPES, NET_SERVICES, RAW_TABLES

FEATURES = [
    "months_active", "monthly_fee", "paperless_billing", "plan_stream_tv", "plan_stream_movies", "net_service",
    "watch_hours_30d", "avg_session_mins_7d", "unique_devices_30d", "skips_7d", "rebuffer_events_7d",
    "failed_payments_90d", "support_tickets_90d", "ticket_avg_resolution_hrs_90d",
]  # fmt: skip


def month_frame(folder: Path) -> pd.DataFrame:
    frames = [pd.read_csv(folder / t.file_name) for t in RAW_TABLES]
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge(frame, on="user_id", validate="one_to_one")
    return merged


@pytest.fixture(scope="module")
def course_sized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate(out, users=7043, months=2, seed=42)
    return out


def test_files_follow_the_contract_format(course_sized: Path) -> None:
    for folder in ("month_000", "month_001"):
        for table in RAW_TABLES:
            header = (course_sized / folder / table.file_name).read_text().splitlines()[0].split(",")
            assert header == [c.name for c in table.columns if not c.optional]
    month = month_frame(course_sized / "month_000")
    assert len(month) == 7043
    assert month["user_id"].map(lambda u: bool(re.fullmatch(r"\d{4}-[A-Z]{5}", u))).all()
    assert set(month["net_service"]) == set(NET_SERVICES) and set(month["contract_type"]) == set(CONTRACT_TYPES)
    no_internet = month["net_service"] == "No"
    assert 0.15 < no_internet.mean() < 0.3
    assert month.loc[no_internet, ["plan_stream_tv", "plan_stream_movies"]].isna().all().all()
    assert month.loc[~no_internet, ["plan_stream_tv", "plan_stream_movies"]].notna().all().all()
    text = (course_sized / "month_000" / "labels.csv").read_text()
    assert "True" in text and "False" in text
    assert (month["monthly_fee"] > 0).all()
    counts = ["months_active", "unique_devices_30d", "skips_7d", "rebuffer_events_7d", "failed_payments_90d"]
    assert (month[counts] >= 0).all().all() and (month["total_paid"] >= 0).all()
    assert (month.loc[month["support_tickets_90d"] == 0, "ticket_avg_resolution_hrs_90d"] == 0).all()


def test_add_on_columns_only_when_asked(tmp_path: Path) -> None:
    generate(tmp_path, users=50, months=1, seed=1, add_ons=True)
    subs = pd.read_csv(tmp_path / "month_000" / "subscriptions.csv")
    assert list(subs.columns[-4:]) == ["add_on_security", "add_on_backup", "add_on_device_protect", "add_on_support"]
    assert subs.loc[subs["net_service"] == "No", "add_on_backup"].isna().all()


def test_churn_rate_and_learnability_are_realistic(course_sized: Path) -> None:
    for folder in ("month_000", "month_001"):
        month = month_frame(course_sized / folder)
        y = month["churn_label"].astype(int)
        assert 0.22 <= y.mean() <= 0.27
        x = month[FEATURES].copy()
        x["net_service"] = x["net_service"].astype("category")
        x[["paperless_billing", "plan_stream_tv", "plan_stream_movies"]] = x[
            ["paperless_billing", "plan_stream_tv", "plan_stream_movies"]
        ].astype(float)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0).fit(x_tr, y_tr)
        auc = roc_auc_score(y_te, model.predict_proba(x_te)[:, 1])
        assert 0.75 <= auc <= 0.85, f"{folder}: AUC {auc:.3f}"


def test_months_evolve_churners_leave_survivors_age_newcomers_join(course_sized: Path) -> None:
    jan, feb = month_frame(course_sized / "month_000"), month_frame(course_sized / "month_001")
    churners = set(jan.loc[jan["churn_label"], "user_id"])
    assert churners and not churners & set(feb["user_id"])
    survivors = jan[~jan["churn_label"]].set_index("user_id")
    feb_idx = feb.set_index("user_id")
    assert set(survivors.index) <= set(feb_idx.index)
    assert (feb_idx.loc[survivors.index, "months_active"] == survivors["months_active"] + 1).all()
    newcomers = feb_idx.drop(index=survivors.index)
    assert 0.8 * len(churners) <= len(newcomers) <= 1.2 * len(churners)
    assert newcomers["months_active"].le(1).all()
    assert (pd.to_datetime(newcomers["signup_date"]) > pd.Timestamp("2024-01-31")).all()
    moved = (feb_idx.loc[survivors.index, "watch_hours_30d"] != survivors["watch_hours_30d"]).mean()
    assert moved > 0.95  # usage moves month to month


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        generate(out, users=200, months=2, seed=seed)
    for table in RAW_TABLES:
        for folder in ("month_000", "month_001"):
            assert (a / folder / table.file_name).read_bytes() == (b / folder / table.file_name).read_bytes()
    assert (a / "month_000" / "users.csv").read_bytes() != (c / "month_000" / "users.csv").read_bytes()


def test_numeric_drift_moves_the_mean_only_from_drift_start(tmp_path: Path) -> None:
    calm, drifted = tmp_path / "calm", tmp_path / "drifted"
    generate(calm, users=3000, months=3, seed=5)
    generate(drifted, users=3000, months=3, seed=5, drift=[DriftSpec("watch_hours_30d", 0.5)], drift_start=2)
    for folder, expected in (("month_000", 1.0), ("month_001", 1.0), ("month_002", 1.5)):
        base = pd.read_csv(calm / folder / "usage_agg_30d.csv")["watch_hours_30d"].mean()
        moved = pd.read_csv(drifted / folder / "usage_agg_30d.csv")["watch_hours_30d"].mean()
        assert moved / base == pytest.approx(expected, rel=0.08), folder


def test_boolean_and_category_drift(tmp_path: Path) -> None:
    generate(
        tmp_path,
        users=3000,
        months=2,
        seed=5,
        drift=[DriftSpec("paperless_billing", 0.8), DriftSpec("net_service", 1.0)],
    )
    jan = pd.read_csv(tmp_path / "month_000" / "subscriptions.csv")
    feb = pd.read_csv(tmp_path / "month_001" / "subscriptions.csv")
    assert jan["paperless_billing"].mean() < 0.65 and feb["paperless_billing"].mean() > 0.9
    assert (jan["net_service"] == "DSL").mean() > 0.25 and (feb["net_service"] == "DSL").sum() == 0


def test_churn_shift_is_target_drift(tmp_path: Path) -> None:
    result = generate(tmp_path, users=4000, months=2, seed=5, churn_shift=1.0)
    assert 0.22 <= result.months[0].churn_rate <= 0.27
    assert result.months[1].churn_rate > 0.35


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("watch_hours_30d", "expected FEATURE=SHIFT"),
        ("colour=0.3", "unknown feature 'colour'"),
        ("skips_7d=lots", "shift 'lots' is not a number"),
        ("paperless_billing=2", "out of range"),
        ("monthly_fee=-1", "would make monthly_fee negative"),
    ],
)
def test_parse_drift_errors_name_the_value(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_drift(spec)


def test_parse_drift_accepts_features() -> None:
    assert parse_drift(" skips_7d = -0.25 ") == DriftSpec("skips_7d", -0.25)


@pytest.mark.parametrize("kwargs", [{"users": 0}, {"months": 0}, {"drift_start": -1}])
def test_bad_counts_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidInput):
        generate(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_labels_depend_on_features_in_the_expected_direction(course_sized: Path) -> None:
    month = month_frame(course_sized / "month_000")
    low_watch = month["watch_hours_30d"] < 6
    assert month.loc[low_watch, "churn_label"].mean() > month.loc[~low_watch, "churn_label"].mean() + 0.15
    failed = month["failed_payments_90d"] >= 2
    assert month.loc[failed, "churn_label"].mean() > month.loc[~failed, "churn_label"].mean() + 0.15
    assert np.corrcoef(month["months_active"], month["churn_label"])[0, 1] < 0
