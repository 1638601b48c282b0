"""One answer to "which backend": the settings and the Feast repo decide Postgres mode the same way, whatever the
URL's scheme spelling, and a password with URL-special characters reaches every Postgres consumer intact (the raw
tables, Feast's SQL registry, offline and online stores).

Real Postgres (the session's server): a role whose password holds ``@ : / # %`` (and a leading ``@`` and ``": "``,
which would change a YAML document they were pasted into), its own database, the loop up to a training set and
an online lookup."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from pipelines.config import Settings

pytestmark = pytest.mark.integration

# every character that means something in a URL or in YAML
AWKWARD_PASSWORD = "@s3cr:et/p#w%d: x"


@pytest.mark.parametrize(
    ("url", "postgres"),
    [
        ("postgresql://u:p@h/db", True),
        ("postgres://u:p@h/db", True),
        ("Postgresql://u:p@h/db", True),
        ("POSTGRES://u:p@h/db", True),
        ("postgresql+psycopg2://u:p@h/db", True),
        ("postgresql+psycopg://u:p@h/db", True),
        ("duckdb:////tmp/x.duckdb", False),
        ("", False),
        (None, False),
    ],
)
def test_settings_and_feast_repo_ask_the_same_function(
    url: str | None, postgres: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repo file's choice of sources follows Settings.is_postgres for every spelling."""
    from pipelines.online import feast_env

    settings = Settings(home=tmp_path, db_url=url)
    assert settings.is_postgres is postgres
    if postgres:
        assert settings.database_url.startswith("postgresql://"), settings.database_url
    # what the repo file reads is what open_store exports; import it fresh under that environment
    import importlib.util

    for key, value in feast_env(settings).items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"_repo_{uuid.uuid4().hex}", settings.feature_repo / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source = module.subs_profile_fv.batch_source
    assert type(source).__name__ == ("PostgreSQLSource" if postgres else "FileSource")

    from pipelines.config import is_postgres_url

    assert is_postgres_url(url) is postgres


@pytest.fixture
def awkward_db(postgres_server) -> Iterator[tuple[str, str]]:
    """A role with AWKWARD_PASSWORD owning a fresh database: (user, database)."""
    import psycopg2
    from psycopg2 import sql

    suffix = uuid.uuid4().hex[:10]
    role, name = f"awk_{suffix}", f"awk_{suffix}"
    admin = psycopg2.connect(postgres_server.url())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (AWKWARD_PASSWORD,))
        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    try:
        yield role, name
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.close()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["Postgresql", "postgresql+psycopg2"])
def test_postgres_spellings_and_awkward_password_reach_every_store(
    scheme: str, awkward_db: tuple[str, str], postgres_server, months_dir: Path, tmp_path: Path
) -> None:
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

    from pipelines.db import connect
    from pipelines.features import apply_repo, build_dataset, materialize
    from pipelines.ingest import ingest_month
    from pipelines.months import as_of_for_index
    from pipelines.online import OnlineFeatures, open_store
    from pipelines.snapshot import take_snapshot

    role, name = awkward_db
    url = f"{scheme}://{role}:{quote(AWKWARD_PASSWORD, safe='')}@127.0.0.1:{postgres_server.port}/{name}"
    settings = Settings(home=tmp_path / "home", db_url=url)
    assert settings.is_postgres
    as_of = as_of_for_index(0)
    db = connect(settings)
    try:
        ingest_month(db, settings, months_dir / "month_000", as_of)
        take_snapshot(db, as_of)
        users = db.user_ids()
        apply_repo(settings)
        store = open_store(settings)
        # the SQL registry is in the awkward role's database, and the sources are the Postgres snapshot tables
        assert store.config.registry.registry_type == "sql"
        view = store.get_feature_view("subs_profile_fv")
        assert isinstance(view.batch_source, PostgreSQLSource), type(view.batch_source)
        materialize(settings, db, as_of, store=store)
        dataset = build_dataset(settings, db, as_of, store=store)
    finally:
        db.close()
    assert dataset.manifest["rows"] > 0
    assert dataset.manifest["rows_with_missing_features"] == 0, dataset.manifest
    found = OnlineFeatures(settings, store=open_store(settings)).lookup(list(users[:5]))
    assert not found.missing, found.missing
    # nothing of the tables landed next to STREAMFLOW_HOME: no parquet snapshot, no file registry
    assert not (settings.home / "snapshots").exists()
    assert not (settings.home / "feast" / "registry.db").exists()
