"""Feast on the snapshots, on both backends: point-in-time correct training sets, online/offline parity,
incremental materialization, and the batched online lookup's bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.db import Database, connect
from pipelines.errors import InvalidInput, NotFound
from pipelines.features import apply_repo, build_dataset, materialize
from pipelines.ingest import ingest_month
from pipelines.online import OnlineFeatures, open_store
from pipelines.snapshot import take_snapshot
from pipelines.tables import SNAPSHOTS
from tests.integration.test_ingest import FEB, JAN

pytestmark = pytest.mark.integration

FEATURES = [f for snap in SNAPSHOTS for f in snap.features]


@pytest.fixture
def loaded(applied):
    return applied


def snapshot_frame(db: Database, as_of) -> pd.DataFrame:
    frames = [db.read_snapshot(s, as_of).set_index("user_id")[list(s.features)] for s in SNAPSHOTS]
    return pd.concat(frames, axis=1).sort_index()


def assert_values_equal(left: pd.DataFrame, right: pd.DataFrame) -> None:
    for name in FEATURES:
        a, b = left[name].astype(object), right[name].astype(object)
        both_null = a.isna() & b.isna()
        same = both_null | (a == b) | np.isclose(pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce"))
        assert same.all(), f"{name}: {a[~same].head(3).tolist()} != {b[~same].head(3).tolist()}"


def test_apply_registers_the_one_feature_list(loaded) -> None:
    settings, _ = loaded
    result = apply_repo(settings)  # applying again is a no-op
    assert result.feature_services == ["churn_features"]
    assert result.feature_views == ["payments_agg_90d_fv", "subs_profile_fv", "support_agg_90d_fv", "usage_agg_30d_fv"]
    assert sorted(result.features) == sorted(FEATURES) and len(result.features) == 14


def test_training_set_is_point_in_time_correct(loaded) -> None:
    settings, db = loaded
    result = build_dataset(settings, db, JAN)
    data = pd.read_parquet(result.path).set_index("user_id").sort_index()
    jan, feb = snapshot_frame(db, JAN), snapshot_frame(db, FEB)
    jan_labels = db.query("SELECT user_id, churn_label FROM labels WHERE as_of = ?", (JAN,)).set_index("user_id")
    assert list(data.index) == sorted(jan_labels.index)
    assert_values_equal(data[FEATURES], jan.loc[data.index])  # every value is January's, never February's
    assert (data["churn_label"] == jan_labels.loc[data.index, "churn_label"].astype(int)).all()
    only_feb = feb.index.difference(jan.index)
    assert len(only_feb) > 0 and not set(only_feb) & set(data.index)  # February's newcomers have no January row
    moved = jan.index.intersection(feb.index)[
        (
            jan.loc[jan.index.intersection(feb.index), "months_active"]
            != feb.loc[jan.index.intersection(feb.index), "months_active"]
        ).to_numpy()
    ]
    assert len(moved) > 0
    assert (data.loc[moved, "months_active"] == jan.loc[moved, "months_active"]).all()
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["rows"] == len(data) and manifest["feature_service"] == "churn_features"
    assert manifest["label_rate"] == pytest.approx(data["churn_label"].mean(), abs=1e-6)
    assert manifest["features"] == [
        c for c in pd.read_parquet(result.path).columns if c not in ("user_id", "churn_label")
    ]
    again = build_dataset(settings, db, JAN)
    assert again.manifest["content_sha256"] == manifest["content_sha256"]  # same data, same hash


def test_online_features_equal_the_latest_offline_values(loaded) -> None:
    settings, db = loaded
    assert materialize(settings, db, JAN).feature_views
    assert materialize(settings, db, FEB).feature_views
    assert materialize(settings, db, FEB).feature_views  # idempotent re-run
    skipped = materialize(settings, db, JAN)
    assert skipped.skipped and "newer as_of (2024-02-29)" in skipped.skipped  # never goes back in time
    feb = snapshot_frame(db, FEB)
    sample = list(feb.sample(n=min(200, len(feb)), random_state=0).index)
    online = OnlineFeatures(settings).lookup(sample)
    assert online.missing == {}
    assert_values_equal(online.features.set_index(pd.Index(sample)), feb.loc[sample])


def test_lookup_reports_unknown_users_keeps_order_and_duplicates_and_allows_contract_nulls(loaded) -> None:
    settings, db = loaded
    materialize(settings, db, FEB)
    feb = snapshot_frame(db, FEB)
    no_internet = feb.index[feb["net_service"] == "No"][0]
    known = feb.index[feb["net_service"] != "No"][0]
    lookup = OnlineFeatures(settings)
    result = lookup.lookup([known, "0000-NOONE", no_internet, known])
    assert result.user_ids == [known, "0000-NOONE", no_internet, known]
    assert len(result.features) == 4
    assert result.missing == {"0000-NOONE": list(lookup.names)}
    assert result.complete.tolist() == [True, False, True, True]
    assert pd.isna(result.features.loc[2, "plan_stream_tv"])  # a NULL the contract allows: a value, not missing
    assert result.features.loc[0, "months_active"] == result.features.loc[3, "months_active"]


def test_lookup_equals_feast_get_online_features(loaded) -> None:
    """The lookup reads the online store directly (one online_read per view): it must answer what the SDK answers,
    for known users, a user whose plan_stream_* are contract NULLs, an unknown user and duplicates."""
    settings, db = loaded
    materialize(settings, db, FEB)
    feb = snapshot_frame(db, FEB)
    lookup = OnlineFeatures(settings)
    no_internet = feb.index[feb["net_service"] == "No"][0]
    ids = [*feb.sample(n=min(150, len(feb)), random_state=1).index, no_internet, "0000-NOONE", no_internet]
    ours = lookup.lookup(ids)
    sdk = lookup.store.get_online_features(features=lookup.service, entity_rows=[{"user_id": u} for u in ids]).to_dict()
    for name in lookup.names:
        assert ours.columns[name] == sdk[name], name
    assert set(ours.missing) == {"0000-NOONE"}


@pytest.mark.parametrize("ids", [[], [""], [None]])
def test_lookup_refuses_empty_or_non_string_ids(loaded, ids) -> None:
    settings, _ = loaded
    with pytest.raises(InvalidInput, match="user_id"):
        OnlineFeatures(settings).lookup(ids)


def test_as_of_without_snapshot_is_a_clear_error(loaded) -> None:
    settings, db = loaded
    march = pd.Timestamp("2024-03-31").date()
    with pytest.raises(NotFound, match=r"no snapshot for as_of 2024-03-31 .*streamflow snapshot --as-of 2024-03-31"):
        build_dataset(settings, db, march)
    with pytest.raises(NotFound, match="no snapshot for as_of 2024-03-31"):
        materialize(settings, db, march)


def test_repo_not_applied_names_the_command(settings: Settings, months_dir: Path) -> None:
    db = connect(settings)
    try:
        ingest_month(db, settings, months_dir / "month_000", JAN)
        take_snapshot(db, JAN)
        for call in (
            lambda: build_dataset(settings, db, JAN),
            lambda: materialize(settings, db, JAN),
            lambda: OnlineFeatures(settings),
        ):
            with pytest.raises(NotFound, match=r"run `streamflow features apply` first"):
                call()
        assert open_store(settings) is not None
    finally:
        db.close()
