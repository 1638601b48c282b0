"""``streamflow ingest``: load one month folder into the raw tables, quarantining the rows that fail validation.

Order of work, so that a failure or a kill never leaves a half month:

1. read and validate the six files (nothing written yet); a file-level problem stops here;
2. write the quarantine report (CSV + JSON) for the month;
3. if any table's quarantined share passes the threshold, stop: nothing of the month is loaded;
4. in ONE transaction: upsert users, replace the month's rows of the five month tables, replace the month's
   quarantine rows, record the ingestion. Re-running the same folder gives the same state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from pipelines.config import Settings
from pipelines.db import Database
from pipelines.errors import InvalidInput, QuarantineThresholdExceeded
from pipelines.metrics import quietly, record_ingest
from pipelines.tables import RAW_TABLES, USERS
from pipelines.validate import QUARANTINE_COLUMNS, TableResult, validate_table

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """What one month's ingestion did."""

    as_of: date
    source: str
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> input/loaded/quarantined
    report_csv: Path | None = None
    report_json: Path | None = None

    @property
    def quarantined(self) -> int:
        return sum(t["quarantined"] for t in self.tables.values())

    @property
    def loaded(self) -> int:
        return sum(t["loaded"] for t in self.tables.values())

    @property
    def input_rows(self) -> int:
        return sum(t["input"] for t in self.tables.values())

    def to_json(self) -> dict:
        return {
            "as_of": self.as_of.isoformat(),
            "source": self.source,
            "tables": self.tables,
            "input_rows": self.input_rows,
            "loaded": self.loaded,
            "quarantined": self.quarantined,
            "quarantine_report": {"csv": str(self.report_csv), "json": str(self.report_json)},
        }


def _content_hash(results: list[TableResult]) -> str:
    """One hash for the month: each file's name and the hash of its bytes (read once, during validation)."""
    digest = hashlib.sha256()
    for res in results:
        digest.update(f"{res.table.file_name}:{res.sha256}\n".encode())
    return digest.hexdigest()


def check_month_dir(month_dir: Path) -> None:
    if not month_dir.is_dir():
        raise InvalidInput(f"{month_dir}: not a folder (expected a month folder such as month_000)")
    missing = [t.file_name for t in RAW_TABLES if not (month_dir / t.file_name).is_file()]
    if len(missing) == len(RAW_TABLES):
        raise InvalidInput(
            f"{month_dir}: not a month folder: none of {', '.join(t.file_name for t in RAW_TABLES)} is there"
        )
    if missing:
        raise InvalidInput(f"{month_dir}: file(s) missing: {', '.join(missing)} (nothing was loaded)")


def _write_report(settings: Settings, as_of: date, quarantine: pd.DataFrame, result: IngestResult) -> None:
    folder = settings.quarantine_dir / as_of.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    result.report_csv = folder / "quarantine.csv"
    result.report_json = folder / "quarantine.json"
    quarantine[QUARANTINE_COLUMNS].to_csv(result.report_csv, index=False)
    payload = {
        "as_of": as_of.isoformat(),
        "source": result.source,
        "tables": result.tables,
        "rows": quarantine[QUARANTINE_COLUMNS].astype(object).where(quarantine.notna(), None).to_dict("records"),
    }
    result.report_json.write_text(json.dumps(payload, indent=1, default=str))


def ingest_month(
    db: Database,
    settings: Settings,
    month_dir: Path,
    as_of: date,
    progress: Callable[[str], None] | None = None,
) -> IngestResult:
    """Validate and load one month folder.

    Args:
        db: the open database.
        settings: threshold and report folder.
        month_dir: folder holding the six CSV files of the contract.
        as_of: the month's as_of.
        progress: called with the table name after each file is validated.

    Returns:
        Counts per table; ``input == loaded + quarantined`` for every table.

    Raises:
        InvalidInput: a file is missing or unusable (names file, line and column).
        QuarantineThresholdExceeded: a table's quarantined share passes ``settings.quarantine_max_share``.
    """
    check_month_dir(month_dir)
    result = IngestResult(as_of=as_of, source=str(month_dir.resolve()))

    stored_ids = db.user_ids()
    results: list[TableResult] = []
    known: pd.Index | None = None
    for table in RAW_TABLES:
        res = validate_table(month_dir / table.file_name, table, as_of, known)
        if table is USERS:
            known = stored_ids.union(pd.Index(res.valid["user_id"]))
        results.append(res)
        result.tables[table.name] = {
            "input": res.input_rows,
            "loaded": res.loaded_rows,
            "quarantined": res.quarantined_rows,
        }
        if progress:
            progress(table.name)

    quarantine = pd.concat(
        [r.quarantine for r in results if len(r.quarantine)] or [pd.DataFrame(columns=QUARANTINE_COLUMNS)],
        ignore_index=True,
    )
    _write_report(settings, as_of, quarantine, result)

    over = [
        (r.table.name, r.quarantined_rows / r.input_rows)
        for r in results
        if r.input_rows and r.quarantined_rows / r.input_rows > settings.quarantine_max_share
    ]
    if over:
        detail = ", ".join(f"{name} {share:.1%}" for name, share in over)
        # the quarantine-ratio alert sees a refused month too (nothing of it loaded)
        refused = {name: {**counts, "loaded": 0} for name, counts in result.tables.items()}
        quietly(record_ingest, settings, as_of, refused, refused=True)
        raise QuarantineThresholdExceeded(
            f"{month_dir}: quarantined share over {settings.quarantine_max_share:.1%} in {detail}; "
            f"nothing of as_of {as_of} was loaded. See {result.report_csv}"
        )

    sha = _content_hash(results)
    log.info("as_of %s: loading %d rows in one transaction", as_of, result.loaded)
    with db.transaction():
        for res in results:
            db.replace_month(res.table, as_of, res.valid)
            log.info("as_of %s: wrote %s (%d rows, not committed yet)", as_of, res.table.name, res.loaded_rows)
        db.replace_quarantine(as_of, quarantine)
        db.record_ingestion(as_of, result.source, sha, result.input_rows, result.loaded, result.quarantined)
    log.info("as_of %s: committed", as_of)
    quietly(record_ingest, settings, as_of, result.tables)
    return result
