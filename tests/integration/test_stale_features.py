"""A user absent from the newest materialized snapshot is a missing feature, never last month's row.

Materializing a snapshot adds and updates online rows and removes none: a user of January who is not in February's
snapshot (the generator drops churned users) keeps January's row. The lookup must answer it as missing — on both
backends, once the registry says February was materialized — and the transformer must answer 422 with
``missing_features`` naming that user (course routes: their usual errors) and count it in
``streamflow_missing_features_total``, for a materialization done while it runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from pipelines.config import Settings
from pipelines.db import Database, connect
from pipelines.features import apply_repo, as_of_timestamp, materialize
from pipelines.ingest import ingest_month
from pipelines.online import OnlineFeatures
from pipelines.snapshot import take_snapshot
from pipelines.tables import SNAPSHOTS
from tests.conftest import free_port, stop_group, wait_http
from tests.integration.test_ingest import FEB, JAN
from tests.integration.test_serving import MODEL, _server, get, metric, post, v2

pytestmark = pytest.mark.integration

T = TypeVar("T")
PICKUP_SECONDS = 15.0  # a materialization is served within about REGISTRY_CHECK_SECONDS; generous on a busy CI


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Both backends (overrides conftest's ``settings`` so that the Postgres case carries its marker)."""
    if request.param == "postgres":
        return Settings(home=tmp_path / "home", db_url=request.getfixturevalue("postgres_url"))
    return Settings(home=tmp_path / "home", db_url=None)


def users(db: Database, as_of) -> set[str]:
    """The users of every snapshot table of ``as_of`` (each feature view holds them all)."""
    sets = [set(db.read_snapshot(s, as_of)["user_id"]) for s in SNAPSHOTS]
    assert all(s == sets[0] for s in sets), "the snapshot tables of one as_of hold different users"
    return sets[0]


def churned_and_stayed(db: Database) -> tuple[list[str], list[str]]:
    jan, feb = users(db, JAN), users(db, FEB)
    churned, stayed = sorted(jan - feb), sorted(jan & feb)
    assert len(churned) >= 5 and len(stayed) >= 5, (len(churned), len(stayed))
    return churned, stayed


def expire_registry_cache(lookup: OnlineFeatures) -> None:
    """What ``cache_ttl_seconds`` elapsing does to the lookup's registry cache."""
    registry = lookup.store.registry
    registry.cached_registry_proto_created -= registry.cached_registry_proto_ttl + timedelta(seconds=1)


def until(call: Callable[[], T], done: Callable[[T], bool], seconds: float = PICKUP_SECONDS) -> T:
    """``call()`` again until ``done`` holds for its answer (the lookup checks the registry in the background,
    at most once per REGISTRY_CHECK_SECONDS); the last answer."""
    deadline = time.monotonic() + seconds
    while not done(answer := call()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return answer


def test_a_user_absent_from_the_newest_snapshot_is_missing_not_last_months_row(
    applied, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, db = applied
    churned, stayed = churned_and_stayed(db)
    materialize(settings, db, JAN)
    lookup = OnlineFeatures(settings)  # opened before February is materialized, like a running transformer
    ids = [churned[0], stayed[0], churned[1]]
    assert lookup.lookup(ids).missing == {}  # January: everyone of January is served

    materialize(settings, db, FEB)
    if settings.is_postgres:  # the SQL registry is read again after cache_ttl_seconds; the file registry on its mtime
        expire_registry_cache(lookup)
    result = until(lambda: lookup.lookup([*churned, *stayed]), lambda r: bool(r.missing))
    every = list(lookup.names)
    assert result.missing == {u: every for u in churned}  # all features of each churned user, nothing else
    assert not result.complete[: len(churned)].any() and result.complete[len(churned) :].all()
    for name in every:  # January's values are not handed out as the features of a missing user
        assert result.columns[name][: len(churned)] == [None] * len(churned), name

    fresh = OnlineFeatures(settings)  # a transformer started after February's materialization
    assert fresh.lookup(ids).missing == {churned[0]: every, churned[1]: every}
    apply_repo(settings)  # a later `features apply` keeps the recorded materializations
    assert OnlineFeatures(settings).lookup([churned[0]]).missing == {churned[0]: every}
    sdk = fresh.store.get_online_features(features=fresh.service, entity_rows=[{"user_id": stayed[0]}]).to_dict()
    assert {n: fresh.lookup([stayed[0]]).columns[n] for n in every} == {n: sdk[n] for n in every}  # February's

    def unreadable(*_args, **_kwargs):
        raise OSError("registry unreachable")

    held = fresh.refresh_as_of()
    assert set(held.values()) == {as_of_timestamp(FEB)}
    monkeypatch.setattr(fresh.store.registry, "list_feature_views", unreadable)
    assert fresh.refresh_as_of() == held  # a registry that cannot be read keeps the as_of last read
    assert fresh.lookup([churned[0]]).missing == {churned[0]: every}


# ------------------------------------------------------------------------------------------------ transformer


class _StubPredictor(BaseHTTPRequestHandler):
    """A v2 predictor answering every row 0.25 / 0: the transformer's hop needs one, the test needs no model."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rows = body["inputs"][0]["shape"][0]
        answer = json.dumps(
            {
                "model_name": MODEL,
                "model_version": "1",
                "id": body.get("id") or "stub",
                "outputs": [
                    {"name": "churn_probability", "datatype": "FP32", "shape": [rows], "data": [0.25] * rows},
                    {"name": "churn_label", "datatype": "INT64", "shape": [rows], "data": [0] * rows},
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def predictor() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _StubPredictor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def missing_total(base_url: str, features: list[str]) -> dict[str, float]:
    return {f: metric(base_url, "streamflow_missing_features_total", feature=f) or 0.0 for f in features}


def test_transformer_refuses_a_stale_user_after_a_materialization_done_while_it_runs(
    tmp_path: Path, months_dir: Path, predictor: str
) -> None:
    settings = Settings(home=tmp_path / "home", db_url=None)
    db = connect(settings)
    try:
        for index, as_of in enumerate((JAN, FEB)):
            ingest_month(db, settings, months_dir / f"month_{index:03d}", as_of)
            take_snapshot(db, as_of)
        apply_repo(settings)
        materialize(settings, db, JAN)
        churned, stayed = churned_and_stayed(db)
        env = {
            **os.environ,
            "STREAMFLOW_HOME": str(settings.home),
            "STREAMFLOW_DB_URL": "",
            "STREAMFLOW_LOG_LEVEL": "WARNING",
        }
        http = free_port()
        log = tmp_path / "transformer.log"
        proc = _server(
            "model_server.transformer", env, log,
            "--http_port", str(http), "--grpc_port", str(free_port()), "--predictor_host", predictor,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{http}"
            wait_http(f"{base}/v2/health/ready", proc, what="transformer")
            infer = f"{base}/v2/models/{MODEL}/infer"
            user = churned[0]
            status, body = post(infer, v2([user]), {"Content-Type": "application/json"})
            assert status == 200, body  # January is the newest snapshot: the user is served

            materialize(settings, db, FEB)  # while the transformer runs
            names = OnlineFeatures(settings).names
            before = missing_total(base, names)
            # answered 200 until the transformer has read the new registry, then 422 (counted once, the first)
            status, body = until(lambda: post(infer, v2([user]), {"Content-Type": "application/json"}),
                                 lambda answer: answer[0] != 200)  # fmt: skip
            assert status == 422, body
            assert body["missing_features"] == {user: names} and "outputs" not in body
            after = missing_total(base, names)
            assert {f: after[f] - before[f] for f in names} == dict.fromkeys(names, 1.0)  # one user, every feature

            status, body = post(infer, v2([stayed[0], user]), {"Content-Type": "application/json"})
            assert status == 422 and list(body["missing_features"]) == [user], body  # only the stale user is named
            status, body = post(infer, v2([stayed[0]]), {"Content-Type": "application/json"})
            assert status == 200 and body["outputs"][0]["data"] == [stayed[0]], body

            status, body = post(f"{base}/predict", {"user_id": user})  # the course routes' usual errors
            assert status == 422, body
            assert body == {"error": f"Missing features for user_id={user}", "missing_features": names}
            status, body = get(f"{base}/features/{user}")
            assert status == 404 and body["missing_features"] == names, body
            assert set(body["features"].values()) == {None}  # January's values are not shown as current
            status, body = get(f"{base}/features/{stayed[0]}")
            assert status == 200 and body["missing_features"] == [], body
        finally:
            stop_group(proc)
    finally:
        db.close()


# ------------------------------------------------------------------------------------------------ corrected month


def _without(month: Path, out: Path, dropped: set[str]) -> Path:
    """A copy of a month folder whose six CSV files no longer hold ``dropped`` (a corrected delivery)."""
    import pandas as pd

    out.mkdir(parents=True)
    for csv in month.glob("*.csv"):
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        frame[~frame["user_id"].isin(dropped)].to_csv(out / csv.name, index=False)
    return out


def test_a_user_dropped_by_a_corrected_reingest_of_the_newest_month_is_missing(
    applied, months_dir: Path, tmp_path: Path
) -> None:
    """Same as_of, so the dropped users' rows carry the newest stamp: materialize must blank them itself."""
    settings, db = applied
    materialize(settings, db, JAN)
    first = materialize(settings, db, FEB)
    assert first.dropped_users == 0
    _, stayed = churned_and_stayed(db)
    dropped, kept = set(stayed[:3]), stayed[3]
    lookup = OnlineFeatures(settings)
    assert lookup.lookup([*sorted(dropped), kept]).missing == {}  # served before the correction

    corrected = _without(months_dir / "month_001", tmp_path / "month_001", dropped)
    ingest_month(db, settings, corrected, FEB)
    take_snapshot(db, FEB)
    assert dropped.isdisjoint(users(db, FEB)) and kept in users(db, FEB)
    again = materialize(settings, db, FEB)
    assert again.dropped_users == len(dropped)

    every = list(lookup.names)
    fresh = OnlineFeatures(settings)
    result = fresh.lookup([*sorted(dropped), kept])
    assert result.missing == {u: every for u in sorted(dropped)}  # every feature of each dropped user, nobody else
    assert all(result.columns[name][3] is not None for name in ("monthly_fee", "months_active"))
    assert materialize(settings, db, FEB).dropped_users == 0  # idempotent: nothing left to blank
    assert fresh.lookup(sorted(dropped)).missing == {u: every for u in sorted(dropped)}


def test_a_lookup_that_may_not_wait_says_busy_and_one_that_may_waits_for_the_writer(applied) -> None:
    """The transformer reads a few ids on its event loop with ``wait=False``: a locked SQLite store must answer
    StoreBusy at once (the request then goes to a thread), and a lookup allowed to wait gets the rows once the
    writer lets go. Postgres reads are network round trips: never on the loop."""
    import sqlite3

    from pipelines.online import StoreBusy

    settings, db = applied
    materialize(settings, db, JAN)
    lookup = OnlineFeatures(settings)
    if settings.is_postgres:
        assert lookup.reads_without_waiting is False
        return
    user = sorted(users(db, JAN))[0]
    writer = sqlite3.connect(settings.home / "feast" / "online_store.db", timeout=30, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")  # a writer holds the file, as a materialization does
    released = threading.Timer(1.0, writer.rollback)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy):
            lookup.lookup([user], wait=False)
        assert time.monotonic() - started < 0.5  # at once, not after SQLite's busy timeout
        released.start()
        result = lookup.lookup([user])  # waits for the writer, then reads
        assert result.missing == {} and time.monotonic() - started >= 0.9
    finally:
        released.cancel()
        released.join()
        writer.close()
