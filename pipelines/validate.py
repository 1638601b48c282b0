"""Read one CSV of a month folder and validate every row against the data contract with pandera.

Two kinds of failure, handled differently:

* the *file* is unusable (missing, not UTF-8, empty, header only, a missing or unknown column): :class:`InvalidInput`
  naming the file, line and column; nothing of the month is loaded;
* a *row* is wrong (bad type, out of range, unknown category, duplicate or unknown user_id, wrong number of
  fields): the row is quarantined with the file, line, column, value and reason, and the valid rows continue.

Values are validated as the text of the file (read with every column as a string), so a failure names the value
exactly as it was written; valid rows are then converted to typed columns for loading.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow_lib
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.errors import InvalidInput
from pipelines.tables import Column, Kind, Table

TRUE_TOKENS = frozenset({"true", "1", "yes"})
FALSE_TOKENS = frozenset({"false", "0", "no"})
_INT_PATTERN = r"[+-]?\d+(?:\.0*)?"  # "3.0" is how pandas writes an int column that once held a NaN
_NUM_PATTERN = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"  # finite decimals only: no inf, no nan

TEXT = pd.StringDtype("pyarrow")
# pyarrow's CSV block (its default): a row longer than this cannot be read, and is refused naming line and column
CSV_BLOCK_BYTES = 1 << 20
QUARANTINE_COLUMNS = ["table_name", "file", "line", "column_name", "value", "reason", "raw_row"]


@dataclass
class TableResult:
    """Outcome of reading and validating one CSV."""

    table: Table
    valid: pd.DataFrame  # typed columns, every column of the table (absent optional ones as NULL)
    quarantine: pd.DataFrame  # one row per (line, column, reason); QUARANTINE_COLUMNS
    input_rows: int
    sha256: str  # of the file's bytes, read once here (the ingestion log records it)

    @property
    def quarantined_rows(self) -> int:
        return int(self.quarantine["line"].nunique()) if len(self.quarantine) else 0

    @property
    def loaded_rows(self) -> int:
        return len(self.valid)


# --------------------------------------------------------------------------------------------- reading the file


def _decode_or_fail(path: Path, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        start = raw.rfind(b"\n", 0, err.start) + 1
        line_no = raw.count(b"\n", 0, err.start) + 1
        header = next(csv.reader([raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip("\r")]), [])
        prefix = raw[start : err.start].decode("utf-8", "replace")
        field_index = len(next(csv.reader([prefix]), [""])) - 1 if prefix else 0
        column = header[field_index] if 0 <= field_index < len(header) else f"#{field_index + 1}"
        raise InvalidInput(
            f"{path}: line {line_no}, column {column!r}: byte 0x{raw[err.start]:02x} is not UTF-8 "
            "(save the file as UTF-8)"
        ) from None


def _unreadable(path: Path, raw: bytes, header: list[str], err: Exception) -> InvalidInput:
    """pyarrow's reader gives up on a row longer than its block (a huge field, or a quote never closed that makes the
    rest of the file one field) without saying where: find that row (the first longer than a block, else the longest
    one) and name its longest field."""
    previous = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        reader = csv.reader(io.StringIO(raw.decode("utf-8")))
        longest: tuple[int, int, list[int]] = (0, 0, [])  # row size, first line, field sizes
        end = 0
        for row in reader:
            start, end = end + 1, reader.line_num
            sizes = [len(field.encode()) for field in row]
            if sum(sizes) + len(row) > longest[0]:
                longest = (sum(sizes) + len(row), start, sizes)
                if longest[0] > CSV_BLOCK_BYTES:
                    break
    finally:
        csv.field_size_limit(previous)
    size, line, sizes = longest
    if size <= CSV_BLOCK_BYTES // 2:
        return InvalidInput(f"{path}: not readable as CSV: {err}")
    index = max(range(len(sizes)), key=sizes.__getitem__)
    column = header[index] if index < len(header) else f"#{index + 1}"
    return InvalidInput(
        f"{path}: line {line}, column {column!r}: a field of {sizes[index]:,} bytes, more than a whole row may hold "
        f"({CSV_BLOCK_BYTES / 2**20:g} MiB); a quote never closed makes the rest of the file one field"
    )


def _nonblank_line_numbers(raw: bytes) -> np.ndarray:
    """Physical line number (1-based) of every non-blank line, in order; pyarrow skips blank lines."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if len(raw) and raw[-1:] != b"\n":
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    # a line holding only "\r" (CRLF files) is blank too
    cr_only = (lengths == 1) & (buf[np.minimum(starts, len(buf) - 1)] == ord("\r")) if len(buf) else lengths
    blank = (lengths == 0) | cr_only
    return np.flatnonzero(~blank) + 1


def _read_header(path: Path, raw: bytes, table: Table) -> list[str]:
    first = raw.split(b"\n", 1)[0].decode("utf-8").lstrip("\ufeff").strip("\r")
    header = [h.strip() for h in next(csv.reader([first]), [])]
    if not any(header):
        raise InvalidInput(f"{path}: line 1: no header row (expected {', '.join(table.required)})")
    seen: set[str] = set()
    for pos, name in enumerate(header, start=1):
        if name in seen:
            raise InvalidInput(f"{path}: line 1, column {pos}: column {name!r} appears twice")
        seen.add(name)
        if name not in table.column_names:
            raise InvalidInput(
                f"{path}: line 1, column {pos}: unexpected column {name!r} (allowed: {', '.join(table.column_names)})"
            )
    missing = [c for c in table.required if c not in seen]
    if missing:
        raise InvalidInput(f"{path}: line 1: missing column(s) {', '.join(repr(m) for m in missing)}")
    return header


def read_table_file(path: Path, table: Table) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, str]:
    """Read a CSV with every value as text.

    Returns:
        The records (string columns, stripped), the malformed rows (wrong field count) as quarantine rows, the
        physical line number of each record, and the SHA-256 of the file's bytes.

    Raises:
        InvalidInput: the file is missing, empty, header only, not UTF-8, or its header is wrong.
    """
    if not path.is_file():
        raise InvalidInput(f"{path}: file is missing (a month folder holds {table.file_name} and five others)")
    raw = path.read_bytes()
    sha256 = hashlib.sha256(raw).hexdigest()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise InvalidInput(f"{path}: line 1: file is empty (expected a header row and data rows)")
    _decode_or_fail(path, raw)
    header = _read_header(path, raw, table)

    bad: list[tuple[int, str, int]] = []

    def _on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((row.number, row.text, row.actual_columns))
        return "skip"

    try:
        arrow = pacsv.read_csv(
            io.BytesIO(raw),
            read_options=pacsv.ReadOptions(
                use_threads=False, column_names=header, skip_rows=1, block_size=CSV_BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=_on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pyarrow_lib.string() for h in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pyarrow_lib.ArrowInvalid as err:
        raise _unreadable(path, raw, header, err) from None
    arrow = pyarrow_lib.table({name: pc.utf8_trim_whitespace(arrow[name]) for name in arrow.column_names})
    # pyarrow-backed strings keep every string operation of the checks vectorised
    frame = arrow.to_pandas(types_mapper={pyarrow_lib.string(): TEXT}.get)

    lines = _nonblank_line_numbers(raw)  # lines[0] is the header
    # pyarrow numbers rows 1-based among the non-blank lines of the file, the header included
    bad_idx = {number - 1 for number, _, _ in bad}
    record_lines = np.array([ln for k, ln in enumerate(lines[1:], start=1) if k not in bad_idx], dtype=np.int64)
    if len(record_lines) != len(frame):  # a quoted value spanning lines: fall back to record order
        record_lines = np.arange(2, len(frame) + 2, dtype=np.int64)
    if len(frame) + len(bad) == 0:
        raise InvalidInput(f"{path}: line 2: no data rows (the file has a header only)")

    malformed = pd.DataFrame(
        [
            {
                "table_name": table.name,
                "file": str(path),
                "line": int(lines[number - 1]) if number <= len(lines) else number,
                "column_name": None,
                "value": text,
                "reason": f"expected {len(header)} fields, found {actual}",
                "raw_row": text,
            }
            for number, text, actual in bad
        ],
        columns=QUARANTINE_COLUMNS,
    )
    for col in table.columns:
        if col.name not in frame.columns:  # optional column absent from this file
            frame[col.name] = pd.Series("", index=frame.index, dtype=TEXT)
    return frame[list(table.column_names)], malformed, record_lines, sha256


# --------------------------------------------------------------------------------------------- the schema


def _arrow(s: pd.Series) -> pyarrow_lib.ChunkedArray:
    """The pyarrow strings behind a text column (zero-copy for the pyarrow-backed columns read here)."""
    arr = pyarrow_lib.array(s.astype(TEXT).array)
    return arr if isinstance(arr, pyarrow_lib.ChunkedArray) else pyarrow_lib.chunked_array([arr])


def _series(values: pyarrow_lib.ChunkedArray, index: pd.Index) -> pd.Series:
    return pd.Series(values.to_numpy(zero_copy_only=False), index=index)


def isin(s: pd.Series, value_set: pyarrow_lib.Array) -> pd.Series:
    """``s.isin(values)`` through pyarrow (pandas converts every value of the set one by one)."""
    return _series(pc.is_in(_arrow(s), value_set=value_set), s.index)


def _fullmatch(s: pd.Series, pattern: str) -> pd.Series:
    return _series(pc.match_substring_regex(_arrow(s), f"^(?:{pattern})$"), s.index)


def _parse_bool(s: pd.Series) -> pd.Series:
    low = s.str.lower()
    out = pd.Series(pd.NA, index=s.index, dtype="boolean")
    out[low.isin(TRUE_TOKENS)] = True
    out[low.isin(FALSE_TOKENS)] = False
    return out


def _to_number(s: pd.Series) -> pd.Series:
    """Parse numbers; anything that is not a finite decimal number becomes NaN."""
    arr = _arrow(s)
    ok = pc.match_substring_regex(arr, f"^(?:{_NUM_PATTERN})$")
    values = pc.cast(pc.if_else(ok, arr, pyarrow_lib.scalar(None, pyarrow_lib.string())), pyarrow_lib.float64())
    return pd.Series(values.to_numpy(zero_copy_only=False), index=s.index, dtype="float64")


def _is_number(s: pd.Series) -> pd.Series:
    return _fullmatch(s, _NUM_PATTERN)


def _column_checks(col: Column, as_of: date) -> list[pa.Check]:
    """Checks on the text of one column; each failure is reported once per cell with its own reason."""
    present = "" if not col.nullable else None

    def skip_empty(fn):
        # empty cells are judged by the "empty value" check (or allowed, for NULL columns)
        return lambda s: (s == "") | fn(s)

    checks: list[pa.Check] = []
    if present is not None:
        checks.append(pa.Check(lambda s: s != "", error="empty value"))
    if col.kind is Kind.BOOL:
        tokens = TRUE_TOKENS | FALSE_TOKENS
        tokens_arr = pyarrow_lib.array(sorted(tokens))
        checks.append(pa.Check(skip_empty(lambda s: isin(s.str.lower(), tokens_arr)), error="not a boolean"))
    elif col.kind is Kind.INT:
        checks.append(pa.Check(skip_empty(lambda s: _fullmatch(s, _INT_PATTERN)), error="not an integer"))
    elif col.kind is Kind.NUM:
        checks.append(pa.Check(skip_empty(_is_number), error="not a number"))
    elif col.kind is Kind.DATE:
        parse = lambda s: pd.to_datetime(s, format="%Y-%m-%d", errors="coerce")  # noqa: E731
        checks.append(pa.Check(skip_empty(lambda s: parse(s).notna()), error="not a date (YYYY-MM-DD)"))
        limit = pd.Timestamp(as_of)
        checks.append(
            pa.Check(skip_empty(lambda s: ~(parse(s) > limit)), error=f"date after the month's as_of {as_of}")
        )
    elif col.kind is Kind.CATEGORY:
        checks.append(
            pa.Check(
                skip_empty(lambda s: isin(s, pyarrow_lib.array(col.domain))),
                error=f"unknown category (expected one of {', '.join(col.domain)})",
            )
        )
    if col.ge is not None:
        bound = col.ge
        checks.append(pa.Check(lambda s: ~(_to_number(s) < bound), error=f"must be >= {bound:g}"))
    if col.gt is not None:
        bound = col.gt
        checks.append(pa.Check(lambda s: ~(_to_number(s) <= bound), error=f"must be > {bound:g}"))
    return checks


def build_schema(table: Table, as_of: date, known_user_ids: pd.Index | None) -> pa.DataFrameSchema:
    """The pandera schema of one table's text columns.

    Args:
        table: the table layout.
        as_of: the month's as_of (dates after it are rejected).
        known_user_ids: for child tables, the user ids a row may reference; None for ``users`` itself.
    """
    columns: dict[str, pa.Column] = {}
    for col in table.columns:
        checks = _column_checks(col, as_of)
        if col.name == "user_id" and known_user_ids is not None:
            known = pyarrow_lib.array(known_user_ids.astype(str), type=pyarrow_lib.string())
            checks.append(
                pa.Check(lambda s, known=known: (s == "") | isin(s, known), error="unknown user_id (not in users)")
            )
        columns[col.name] = pa.Column(
            TEXT,
            checks=checks,
            nullable=False,
            unique=col.name == "user_id",
            # every occurrence of a duplicated id is quarantined: nothing says which one is right
            report_duplicates="all",
        )
    return pa.DataFrameSchema(columns, strict=True, name=table.name)


_REASONS = {"field_uniqueness": "duplicate user_id in this file"}


def _to_typed(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for col in table.columns:
        s = frame[col.name]
        if col.kind is Kind.BOOL:
            out[col.name] = _parse_bool(s)
        elif col.kind is Kind.INT:
            out[col.name] = _to_number(s).round().astype("Int64")
        elif col.kind is Kind.NUM:
            out[col.name] = _to_number(s).astype("float64")
        elif col.kind is Kind.DATE:
            out[col.name] = pd.to_datetime(s, format="%Y-%m-%d")
        else:
            out[col.name] = s.astype(object)
    return out


def validate_table(path: Path, table: Table, as_of: date, known_user_ids: pd.Index | None) -> TableResult:
    """Read and validate one CSV of a month.

    Args:
        path: the CSV file.
        table: its layout.
        as_of: the month's as_of.
        known_user_ids: user ids a child row may reference (valid users of this month and stored users);
            None when validating ``users``.

    Returns:
        Valid typed rows and quarantined rows; ``input_rows == loaded_rows + quarantined_rows``.

    Raises:
        InvalidInput: the file itself is unusable (see :func:`read_table_file`).
    """
    frame, malformed, record_lines, sha256 = read_table_file(path, table)
    schema = build_schema(table, as_of, known_user_ids)
    try:
        schema.validate(frame, lazy=True)
        failures = pd.DataFrame(columns=["index", "column", "check", "failure_case"])
    except pa.errors.SchemaErrors as err:
        failures = err.failure_cases[["index", "column", "check", "failure_case"]].dropna(subset=["index"])

    bad_positions = failures["index"].astype("int64").to_numpy() if len(failures) else np.array([], "int64")
    row_failures = pd.DataFrame(
        {
            "table_name": table.name,
            "file": str(path),
            "line": record_lines[bad_positions] if len(failures) else [],
            "column_name": failures["column"].to_numpy() if len(failures) else [],
            "value": failures["failure_case"].astype(str).to_numpy() if len(failures) else [],
            "reason": failures["check"].map(lambda c: _REASONS.get(c, c)).to_numpy() if len(failures) else [],
            "raw_row": _raw_rows(frame, bad_positions),
        },
        columns=QUARANTINE_COLUMNS,
    )
    quarantine = (
        pd.concat([q for q in (malformed, row_failures) if len(q)], ignore_index=True)
        if (len(malformed) or len(row_failures))
        else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    )
    quarantine = quarantine.sort_values(["line", "column_name"], na_position="first", kind="stable")
    quarantine = quarantine.reset_index(drop=True)

    keep = np.ones(len(frame), dtype=bool)
    keep[np.unique(bad_positions)] = False
    valid = _to_typed(frame[keep], table).reset_index(drop=True)
    return TableResult(table, valid, quarantine, input_rows=len(frame) + len(malformed), sha256=sha256)


def _raw_rows(frame: pd.DataFrame, positions: np.ndarray) -> list[str]:
    if not len(positions):
        return []
    rows = frame.iloc[positions]
    return [",".join(_quote(v) for v in rec) for rec in rows.itertuples(index=False, name=None)]


def _quote(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if ("," in value or '"' in value) else value
