"""The synthetic data generator: contract format, realism (churn rate, learnable but not trivially), month evolution,
determinism, and what each drift knob moves."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from pipelines.errors import InvalidInput
from pipelines.generate import DriftSpec, MonthSummary, generate, parse_drift

# Written from ../shared/DATA_CONTRACT.md, not from pipelines.tables: the generator must match the contract itself.
HEADERS = {
    "users.csv": "user_id,signup_date,user_gender,user_is_senior,has_family,has_dependents",
    "subscriptions.csv": "user_id,months_active,plan_stream_tv,plan_stream_movies,contract_type,paperless_billing,"
    "monthly_fee,total_paid,net_service",
    "usage_agg_30d.csv": "user_id,watch_hours_30d,avg_session_mins_7d,unique_devices_30d,skips_7d,rebuffer_events_7d",
    "payments_agg_90d.csv": "user_id,failed_payments_90d",
    "support_agg_90d.csv": "user_id,support_tickets_90d,ticket_avg_resolution_hrs_90d",
    "labels.csv": "user_id,churn_label",
}
ADD_ONS = ["add_on_security", "add_on_backup", "add_on_device_protect", "add_on_support"]
FEATURES = [
    "months_active", "monthly_fee", "paperless_billing", "plan_stream_tv", "plan_stream_movies", "net_service",
    "watch_hours_30d", "avg_session_mins_7d", "unique_devices_30d", "skips_7d", "rebuffer_events_7d",
    "failed_payments_90d", "support_tickets_90d", "ticket_avg_resolution_hrs_90d",
]  # fmt: skip
ID = re.compile(r"\d{4}-[A-Z]{5}")


def month_frame(folder: Path) -> pd.DataFrame:
    """The six files of a month joined on user_id (each file must hold exactly the same users)."""
    merged = pd.read_csv(folder / "users.csv")
    for name in list(HEADERS)[1:]:
        merged = merged.merge(pd.read_csv(folder / name), on="user_id", how="outer", validate="one_to_one")
    assert not merged.isna().drop(columns=["plan_stream_tv", "plan_stream_movies"]).any().any()
    return merged


def read(out: Path, month: int, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"month_{month:03d}" / name)


def holdout_auc(month: pd.DataFrame) -> float:
    x = month[FEATURES].copy()
    x["net_service"] = x["net_service"].astype("category")
    for name in ("paperless_billing", "plan_stream_tv", "plan_stream_movies"):
        x[name] = x[name].astype(float)  # empty (no internet) stays NaN: the model handles missing values
    y = month["churn_label"].astype(int)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    # one thread: OpenMP threads on a busy 2-core machine make this ten times slower, for the same result
    with threadpool_limits(1):
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
        model.fit(x_train, y_train)
        return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[MonthSummary]]:
    """The course-sized default: 7,043 users, two months, seed 42."""
    out = tmp_path_factory.mktemp("course")
    return out, generate(out).months


# ------------------------------------------------------------------------------------------------ format


def test_month_folders_as_of_and_exact_headers(course: tuple[Path, list[MonthSummary]]) -> None:
    out, months = course
    assert sorted(p.name for p in out.iterdir()) == ["month_000", "month_001"]
    assert [m.as_of for m in months] == [date(2024, 1, 31), date(2024, 2, 29)]
    assert [m.folder for m in months] == [out / "month_000", out / "month_001"]
    for folder in ("month_000", "month_001"):
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(HEADERS)
        for name, header in HEADERS.items():
            assert (out / folder / name).read_text().split("\n", 1)[0] == header, (folder, name)


def test_every_file_holds_exactly_the_month_users(course: tuple[Path, list[MonthSummary]]) -> None:
    out, months = course
    assert months[0].users == 7043
    for index, summary in enumerate(months):
        ids = read(out, index, "users.csv")["user_id"]
        assert len(ids) == summary.users and ids.is_unique
        assert ids.map(lambda u: bool(ID.fullmatch(u))).all()
        for name in HEADERS:
            assert read(out, index, name)["user_id"].tolist() == ids.tolist(), name


def test_files_are_byte_for_byte_what_pandas_writes(tmp_path: Path) -> None:
    generate(tmp_path, users=500, months=2, seed=3, add_ons=True)
    for folder in ("month_000", "month_001"):
        for name in HEADERS:
            path = tmp_path / folder / name
            frame = pd.read_csv(path, float_precision="round_trip", dtype={"signup_date": str})
            assert frame.to_csv(index=False).encode() == path.read_bytes(), f"{folder}/{name}"


def test_values_are_realistic_and_in_their_domains(course: tuple[Path, list[MonthSummary]]) -> None:
    month = month_frame(course[0] / "month_000")
    shares = month["net_service"].value_counts(normalize=True)
    assert set(shares.index) == {"DSL", "Fiber optic", "No"}
    assert shares["No"] == pytest.approx(0.22, abs=0.03) and shares["Fiber optic"] == pytest.approx(0.44, abs=0.03)
    contracts = month["contract_type"].value_counts(normalize=True)
    assert set(contracts.index) == {"Month-to-month", "One year", "Two year"}
    assert contracts["Month-to-month"] == pytest.approx(0.55, abs=0.04)
    assert set(month["user_gender"]) == {"Male", "Female"}
    assert month["user_is_senior"].mean() == pytest.approx(0.16, abs=0.03)
    assert month["paperless_billing"].mean() == pytest.approx(0.59, abs=0.03)
    no_internet = month["net_service"] == "No"
    plans = month[["plan_stream_tv", "plan_stream_movies"]]
    assert plans[no_internet].isna().all().all() and plans[~no_internet].notna().all().all()
    assert month["months_active"].between(0, 72).all() and (month["months_active"] <= 3).mean() > 0.1
    assert (month["months_active"] >= 60).mean() > 0.1  # many new users, many long-standing ones
    assert month["monthly_fee"].between(18, 120).all()
    assert (month["total_paid"] >= 0).all()
    paid_per_month = month["total_paid"] / (month["months_active"] * month["monthly_fee"])
    assert paid_per_month[month["months_active"] > 0].between(0.8, 1.2).all()
    fee = month.groupby("net_service")["monthly_fee"].mean()
    assert fee["No"] < fee["DSL"] < fee["Fiber optic"]
    assert month["unique_devices_30d"].between(1, 6).all()
    counts = ["skips_7d", "rebuffer_events_7d", "failed_payments_90d", "support_tickets_90d"]
    assert (month[counts] >= 0).all().all()
    assert month[["watch_hours_30d", "avg_session_mins_7d"]].ge(0).all().all()
    assert month["watch_hours_30d"].mean() > month["watch_hours_30d"].median()  # skewed
    rebuffer = month.groupby("net_service")["rebuffer_events_7d"].mean()
    assert rebuffer["DSL"] > rebuffer["Fiber optic"]
    assert (month["failed_payments_90d"] == 0).mean() > 0.75
    assert month["support_tickets_90d"].le(3).mean() > 0.95
    resolution = month["ticket_avg_resolution_hrs_90d"]
    assert ((resolution == 0) == (month["support_tickets_90d"] == 0)).all()
    signup = pd.to_datetime(month["signup_date"], format="%Y-%m-%d")
    assert (signup <= pd.Timestamp("2024-01-31")).all()


def test_add_on_columns_only_when_asked(tmp_path: Path) -> None:
    generate(tmp_path / "plain", users=300, months=1, seed=1)
    generate(tmp_path / "full", users=300, months=1, seed=1, add_ons=True)
    plain, full = read(tmp_path / "plain", 0, "subscriptions.csv"), read(tmp_path / "full", 0, "subscriptions.csv")
    assert not any(c.startswith("add_on") for c in plain.columns)
    assert list(full.columns) == [*plain.columns, *ADD_ONS]
    pd.testing.assert_frame_equal(full[plain.columns], plain)  # the same data, four more columns
    no_internet = full["net_service"] == "No"
    assert full.loc[no_internet, ADD_ONS].isna().all().all()
    assert full.loc[~no_internet, ADD_ONS].notna().all().all()
    assert set(full.loc[~no_internet, "add_on_backup"]) == {True, False}


# ------------------------------------------------------------------------------------------------ churn


def test_churn_rate_and_auc_are_realistic(course: tuple[Path, list[MonthSummary]]) -> None:
    out, months = course
    for summary in months:
        month = month_frame(summary.folder)
        assert month["churn_label"].mean() == pytest.approx(summary.churn_rate)
        assert 0.22 <= summary.churn_rate <= 0.27, summary
        auc = holdout_auc(month)
        assert 0.75 <= auc <= 0.85, f"{summary.folder.name}: AUC {auc:.3f}"


def test_labels_follow_the_features_in_the_expected_direction(course: tuple[Path, list[MonthSummary]]) -> None:
    month = month_frame(course[0] / "month_000")
    churn = month["churn_label"]

    def gap(mask: pd.Series) -> float:
        return churn[mask].mean() - churn[~mask].mean()

    assert gap(month["watch_hours_30d"] < 5) > 0.15
    assert gap(month["failed_payments_90d"] >= 2) > 0.15
    assert gap(month["months_active"] <= 3) > 0.15
    fiber = month[month["net_service"] == "Fiber optic"]
    assert (
        fiber.loc[fiber["rebuffer_events_7d"] >= 3, "churn_label"].mean()
        > fiber.loc[fiber["rebuffer_events_7d"] == 0, "churn_label"].mean() + 0.1
    )  # fibre users do not forgive buffering


# ------------------------------------------------------------------------------------------------ evolution


def test_months_evolve_churners_leave_survivors_age_newcomers_join(course: tuple[Path, list[MonthSummary]]) -> None:
    out, _ = course
    jan, feb = month_frame(out / "month_000").set_index("user_id"), month_frame(out / "month_001").set_index("user_id")
    churners = jan.index[jan["churn_label"]]
    survivors = jan.index[~jan["churn_label"]]
    assert len(churners) > 1000 and not set(churners) & set(feb.index)
    assert set(survivors) <= set(feb.index)
    assert (feb.loc[survivors, "months_active"] == jan.loc[survivors, "months_active"] + 1).all()
    paid = feb.loc[survivors, "total_paid"] - jan.loc[survivors, "total_paid"]
    assert np.allclose(paid, jan.loc[survivors, "monthly_fee"], atol=0.011)
    profile = ["signup_date", "user_gender", "contract_type", "net_service"]
    assert (feb.loc[survivors, profile] == jan.loc[survivors, profile]).all().all()
    newcomers = feb.drop(index=survivors)
    assert 0.85 * len(churners) <= len(newcomers) <= 1.15 * len(churners)
    assert newcomers["months_active"].isin([0, 1]).all()
    signup = pd.to_datetime(newcomers["signup_date"])
    assert signup.between(pd.Timestamp("2024-02-01"), pd.Timestamp("2024-02-29")).all()
    # usage moves, with persistence
    watch = np.log(jan.loc[survivors, "watch_hours_30d"]), np.log(feb.loc[survivors, "watch_hours_30d"])
    assert (watch[0] != watch[1]).mean() > 0.99 and 0.5 < np.corrcoef(*watch)[0, 1] < 0.95


def test_ids_are_unique_across_months(tmp_path: Path) -> None:
    generate(tmp_path, users=2000, months=4, seed=9)
    seen: dict[str, str] = {}
    for month in range(4):
        users = read(tmp_path, month, "users.csv").set_index("user_id")
        for user_id, signup in users["signup_date"].items():
            assert seen.setdefault(user_id, signup) == signup  # an id is one user, never reissued


# ------------------------------------------------------------------------------------------------ determinism


def test_same_arguments_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"users": 400, "months": 2, "drift": [DriftSpec("skips_7d", 0.5)], "add_ons": True}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, seed=seed, **kwargs)
    for folder in ("month_000", "month_001"):
        for name in HEADERS:
            a, b = (tmp_path / "a" / folder / name).read_bytes(), (tmp_path / "b" / folder / name).read_bytes()
            assert a == b, f"{folder}/{name}"
            assert a != (tmp_path / "c" / folder / name).read_bytes()


def test_progress_is_called_after_each_month(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate(tmp_path, users=50, months=3, progress=lambda k: calls.append((k, len(list(tmp_path.iterdir())))))
    assert calls == [(1, 1), (2, 2), (3, 3)]


# ------------------------------------------------------------------------------------------------ drift


def _same_month(a: Path, b: Path, month: int) -> bool:
    folder = f"month_{month:03d}"
    return all((a / folder / n).read_bytes() == (b / folder / n).read_bytes() for n in HEADERS)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calm")
    generate(out, users=4000, months=3, seed=5)
    return out


@pytest.mark.parametrize(
    ("feature", "file", "shift"),
    [
        ("watch_hours_30d", "usage_agg_30d.csv", 0.5),
        ("monthly_fee", "subscriptions.csv", 0.3),
        ("rebuffer_events_7d", "usage_agg_30d.csv", 1.0),
        ("ticket_avg_resolution_hrs_90d", "support_agg_90d.csv", -0.5),
    ],
)
def test_numeric_drift_scales_the_feature_from_drift_start_only(
    calm: Path, tmp_path: Path, feature: str, file: str, shift: float
) -> None:
    generate(tmp_path, users=4000, months=3, seed=5, drift=[DriftSpec(feature, shift)], drift_start=1)
    assert _same_month(calm, tmp_path, 0)  # before drift_start: byte-identical to the undrifted run
    for month in (1, 2):  # every drifted month moves by the shift once: no compounding
        ratio = read(tmp_path, month, file)[feature].mean() / read(calm, month, file)[feature].mean()
        assert ratio == pytest.approx(1 + shift, rel=0.06), (feature, month)


def test_count_drift_stays_integer_and_in_range(tmp_path: Path) -> None:
    generate(tmp_path, users=1000, months=2, seed=2, drift=[DriftSpec("unique_devices_30d", -0.9)], drift_start=0)
    devices = read(tmp_path, 1, "usage_agg_30d.csv")["unique_devices_30d"]
    assert devices.dtype.kind == "i" and (devices == 1).all()


def test_boolean_drift_moves_a_share_and_keeps_empty_plans(calm: Path, tmp_path: Path) -> None:
    drift = [DriftSpec("paperless_billing", 0.8), DriftSpec("plan_stream_tv", -1.0)]
    generate(tmp_path, users=4000, months=3, seed=5, drift=drift, drift_start=1)
    assert _same_month(calm, tmp_path, 0)
    for month in (1, 2):
        subs = read(tmp_path, month, "subscriptions.csv")
        before = read(calm, month, "subscriptions.csv")["paperless_billing"].mean()
        assert subs["paperless_billing"].mean() == pytest.approx(before + 0.8 * (1 - before), abs=0.03)
        internet = subs["net_service"] != "No"
        assert (subs.loc[internet, "plan_stream_tv"] == False).all()  # noqa: E712
        assert subs.loc[~internet, "plan_stream_tv"].isna().all()
        assert subs["plan_stream_movies"].notna().eq(internet).all()


def test_net_service_drift_moves_the_same_dsl_users_to_fiber(calm: Path, tmp_path: Path) -> None:
    generate(tmp_path, users=4000, months=3, seed=5, drift=[DriftSpec("net_service", 0.5)], drift_start=1)
    assert _same_month(calm, tmp_path, 0)
    jan, feb, mar = (read(tmp_path, m, "subscriptions.csv").set_index("user_id") for m in range(3))
    for month, frame in ((1, feb), (2, mar)):
        dsl_before = (read(calm, month, "subscriptions.csv")["net_service"] == "DSL").mean()
        assert (frame["net_service"] == "DSL").mean() == pytest.approx(dsl_before / 2, abs=0.03)
        assert (frame["net_service"] == "No").mean() == pytest.approx(
            (read(calm, month, "subscriptions.csv")["net_service"] == "No").mean(), abs=0.02
        )
    both = feb.index.intersection(mar.index)
    assert (feb.loc[both, "net_service"] == mar.loc[both, "net_service"]).all()  # a moved user stays moved
    dsl_in_jan = jan.index[jan["net_service"] == "DSL"].intersection(feb.index)
    assert (feb.loc[dsl_in_jan, "net_service"] == "Fiber optic").mean() == pytest.approx(0.5, abs=0.05)
    assert (feb.loc[jan.index[jan["net_service"] == "No"].intersection(feb.index), "net_service"] == "No").all()


def test_feature_drift_changes_labels_consistently(calm: Path, tmp_path: Path) -> None:
    result = generate(tmp_path, users=4000, months=3, seed=5, drift=[DriftSpec("watch_hours_30d", -0.7)])
    calm_rates = [read(calm, m, "labels.csv")["churn_label"].mean() for m in range(3)]
    assert result.months[0].churn_rate == pytest.approx(calm_rates[0])
    assert result.months[1].churn_rate > calm_rates[1] + 0.05  # people who barely watch churn


def test_churn_shift_is_target_drift_from_drift_start(calm: Path, tmp_path: Path) -> None:
    up = generate(tmp_path / "up", users=4000, months=3, seed=5, churn_shift=1.0, drift_start=2)
    down = generate(tmp_path / "down", users=4000, months=3, seed=5, churn_shift=-1.0, drift_start=2)
    assert _same_month(calm, tmp_path / "up", 0) and _same_month(calm, tmp_path / "up", 1)
    assert 0.22 <= up.months[1].churn_rate <= 0.27
    assert 0.40 <= up.months[2].churn_rate <= 0.52  # 24 % with its log-odds moved by 1.0: 46 %
    assert down.months[2].churn_rate < 0.15
    # target drift: the month's features are exactly those of the undrifted run, only the labels move
    for name in HEADERS:
        same = (tmp_path / "up" / "month_002" / name).read_bytes() == (calm / "month_002" / name).read_bytes()
        assert same == (name != "labels.csv"), name


# ------------------------------------------------------------------------------------------------ arguments


def test_parse_drift_accepts_the_cli_form() -> None:
    assert parse_drift("watch_hours_30d=0.5") == DriftSpec("watch_hours_30d", 0.5)
    assert parse_drift(" skips_7d = -0.25 ") == DriftSpec("skips_7d", -0.25)
    assert parse_drift("net_service=0.3") == DriftSpec("net_service", 0.3)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("watch_hours_30d", ["'watch_hours_30d'", "FEATURE=SHIFT", "monthly_fee"]),
        ("colour=0.3", ["'colour'", "watch_hours_30d", "net_service", "plan_stream_tv"]),
        ("skips_7d=lots", ["'lots'", "not a number"]),
        ("paperless_billing=2", ["paperless_billing=2", "[-1, 1]"]),
        ("monthly_fee=-1", ["monthly_fee=-1", "> -1"]),
        ("watch_hours_30d=nan", ["watch_hours_30d=nan", "finite"]),
    ],
)
def test_parse_drift_errors_name_the_value(spec: str, expected: list[str]) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_drift(spec)
    for text in expected:
        assert text in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"users": 0}, "users 0"),
        ({"months": 0}, "months 0"),
        ({"drift_start": -1}, "drift_start -1"),
        ({"seed": -3}, "seed -3"),
        ({"churn_shift": float("inf")}, "churn_shift inf"),
        ({"drift": [DriftSpec("colour", 0.1)]}, "'colour'"),
        ({"drift": [DriftSpec("monthly_fee", -1.5)]}, "monthly_fee=-1.5"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(named)):
        generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_an_out_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data.csv"
    target.write_text("not a folder")
    with pytest.raises(InvalidInput, match="data.csv"):
        generate(target, users=10, months=1)
    assert target.read_text() == "not a folder"


def test_chunked_writing_does_not_change_a_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate(tmp_path / "whole", users=300, months=2, seed=8, add_ons=True)
    monkeypatch.setattr("pipelines.generate._WRITE_CHUNK_ROWS", 7)
    generate(tmp_path / "chunked", users=300, months=2, seed=8, add_ons=True)
    for month in (0, 1):
        assert _same_month(tmp_path / "whole", tmp_path / "chunked", month)
