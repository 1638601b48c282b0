"""The one entry point, ``streamflow``, used by people, ``make demo``, the Argo steps and the tests.

Every command prints a short human summary, or with ``--json`` exactly one JSON object on stdout. Exit codes:
0 success, 2 bad input, 75 the state is held by another run (retry later, or ``--wait SECONDS``), 130 interrupted,
1 anything else. The commands stay thin: each calls one typed function of its stage.

A failure, whatever raised it (a StreamflowError, a full disk, a read-only STREAMFLOW_HOME, a library's exception), is
one message: one line on stderr, and with ``--json`` one object ``{"ok": false, "error": …, "exit_code": …}`` on
stdout; no traceback unless ``streamflow --debug <command>`` (the global option, given before the command).

A command that changes the state (``changes_state=True`` below) holds the state lock (:mod:`pipelines.lock`) for its
whole run, taken before the database is opened; a second one refuses at once naming the holder (exit 75), or with
``--wait SECONDS`` waits that long for it. Read-only commands (status, smoke, serve, data generate) take none.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.table import Table as RichTable

from pipelines.config import Settings
from pipelines.errors import InvalidInput, StreamflowError, redact, redact_url, url_secrets

app = typer.Typer(
    help="StreamFlow: churn prediction kept honest month after month.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Synthetic data in the course's month-folder format.", no_args_is_help=True)
app.add_typer(data_app, name="data")
features_app = typer.Typer(help="The Feast feature store on the snapshots.", no_args_is_help=True)
app.add_typer(features_app, name="features")
dataset_app = typer.Typer(help="Point-in-time correct training sets.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON object on stdout instead of the summary.")

# bound to the real stdout: library output is redirected to stderr while a command runs (see `command`)
_out = Console(file=sys.stdout)
_err = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    if ctx.obj is None:
        ctx.obj = Settings()
    return ctx.obj


DEBUG_KEY = "streamflow.debug"  # in the click context's meta: the global --debug
VERBOSE_KEY = "streamflow.verbose"  # the global --verbose


def command(fn: Callable[..., dict[str, Any]] | None = None, *, changes_state: bool = False) -> Callable[..., Any]:
    """Run a command body that returns its JSON payload; print it or its summary; map every error to one message and
    its exit code.

    ``changes_state=True``: the command also gets ``--wait SECONDS`` and runs holding the state lock.
    """
    if fn is None:
        return functools.partial(command, changes_state=changes_state)
    body = fn
    if "ctx" not in inspect.signature(body).parameters:
        raise TypeError(f"{body.__name__}: a command takes ctx: typer.Context (its failures need it)")

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        as_json = kwargs.get("as_json", False)
        wait = kwargs.pop("wait", None)
        ctx = kwargs["ctx"]
        try:
            # stdout holds our summary or the one JSON object, stderr our progress bars and failures: what
            # libraries print (Feast's materialize lines, MLflow's "Registered model …", warnings) goes to the log
            with _library_output(ctx):
                with _state_lock(ctx, wait) if changes_state else nullcontext():
                    with _step_figures(ctx) if changes_state else nullcontext():
                        payload = body(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own exits and usage errors
            raise
        except StreamflowError as err:
            _fail(ctx, str(err), err.exit_code, as_json)
        except OSError as err:  # a full disk, a read-only or missing folder
            _fail(ctx, f"{err.filename or ''}: {err.strerror or err}".lstrip(": "), 1, as_json)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130, as_json)
        except Exception as err:  # a library's exception too is one message, not a traceback
            _fail(ctx, _unexpected(err), 1, as_json)
        if as_json and payload is not None:  # None: the command printed its one object itself (serve)
            sys.stdout.write(json.dumps(payload, default=str) + "\n")

    if changes_state:
        # one more option, --wait, on every state-changing command (Typer reads the parameters from the signature)
        sig = inspect.signature(body, eval_str=True)
        params = list(sig.parameters.values())
        wait = inspect.Parameter("wait", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=WaitOption,
                                 annotation=float | None)  # fmt: skip
        wrapper.__signature__ = sig.replace(parameters=[*params[:-1], wait, params[-1]])  # type: ignore[attr-defined]
    return wrapper


LOG_FILE = Path("logs") / "streamflow.log"  # under STREAMFLOW_HOME


class _LibrarySink(io.TextIOBase):
    """Where library output goes while a command runs: ``STREAMFLOW_HOME/logs/streamflow.log``, opened on the first
    write (a command whose libraries say nothing creates nothing), and with ``--verbose`` the terminal too. If the
    log file cannot be opened (a read-only STREAMFLOW_HOME), the terminal gets it, as it would without a log."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, path: Path, terminal: Any, verbose: bool, title: str) -> None:
        self.path, self.terminal, self.verbose, self.title = path, terminal, verbose, title
        self._file: Any = None
        self._unavailable = False

    def _open(self) -> Any:
        if self._file is None and not self._unavailable:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
                stamp = datetime.now(UTC).isoformat(timespec="seconds")
                self._file.write(f"--- {stamp} pid {os.getpid()}: {self.title}\n")
            except OSError:
                self._unavailable = True
        return self._file

    def write(self, text: str) -> int:
        log = self._open()
        if log is not None:
            log.write(text)
        if self.verbose or log is None:
            self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        log = self._open()
        return log.fileno() if log is not None else self.terminal.fileno()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def _library_output(ctx: typer.Context) -> Iterator[None]:
    """Route what libraries print (stdout and stderr, warnings, third-party logging) to the log file while a
    command body runs; our console keeps the terminal's stderr meanwhile."""
    terminal = sys.stderr
    title = " ".join(["streamflow", *sys.argv[1:]])
    sink = _LibrarySink(_settings(ctx).home / LOG_FILE, terminal, bool(ctx.meta.get(VERBOSE_KEY)), title)
    before = _err._file  # None: follow sys.stderr (rich's default), restored after the command
    _err.file = terminal
    try:
        with redirect_stdout(sink), redirect_stderr(sink):
            yield
    finally:
        _err.file = before
        sink.close()


class _OutputHandler(logging.Handler):
    """Logging of the CLI: StreamFlow's own loggers on the terminal's stderr, every other library's on the current
    ``sys.stderr`` (the log file while a command runs, see :func:`_library_output`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            own = record.name.partition(".")[0] in ("pipelines", "model_server")
            stream = _err.file if own else sys.stderr
            stream.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging never breaks a command
            self.handleError(record)


WaitOption = typer.Option(
    None, "--wait", metavar="SECONDS", min=0,
    help="When another run holds the state lock, wait up to SECONDS for it (default: refuse at once, exit 75).",
)  # fmt: skip


@contextmanager
def _state_lock(ctx: typer.Context, wait: float | None) -> Iterator[None]:
    from pipelines.lock import state_lock

    name = ctx.command_path.partition(" ")[2] or ctx.command_path  # "features materialize"
    with state_lock(
        _settings(ctx),
        name,
        wait=wait,
        on_wait=lambda msg: _err.print(msg, highlight=False, soft_wrap=True, markup=False),
    ):
        yield


# the settings that may hold a password: no failure message shows it (nor a piece of it), whoever wrote the message
_URL_SETTINGS = ("STREAMFLOW_DB_URL", "STREAMFLOW_MLFLOW_TRACKING_URI", "STREAMFLOW_PUSHGATEWAY_URL")


def _step_figures(ctx: typer.Context):
    """Publish the run of a state-changing command as a pipeline step (duration, outcome, last success): once it
    holds the lock, so a run refused because another one is busy is not a failed step."""
    from pipelines.metrics import step

    return step(_settings(ctx), ctx.command_path.partition(" ")[2].replace(" ", "_") or ctx.command_path)


def _unexpected(err: BaseException) -> str:
    return f"{type(err).__name__}: {err} (unexpected error; `streamflow --debug <command>` prints its traceback)"


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip()) or "failed"


def _report(message: str, code: int, as_json: bool, debug: bool) -> None:
    """The one message of a failure (called while the exception is being handled)."""
    secrets = [s for name in _URL_SETTINGS for s in url_secrets(os.environ.get(name))]
    if debug and sys.exc_info()[0] is not None:
        sys.stderr.write(redact(traceback.format_exc(), secrets))
    message = redact(_one_line(message), secrets)
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "error": message, "exit_code": code}) + "\n")
        sys.stdout.flush()
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(ctx: typer.Context, message: str, code: int, as_json: bool) -> None:
    _report(message, code, as_json, bool(ctx.meta.get(DEBUG_KEY)))
    raise typer.Exit(code)


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[..., None]]:
    if not enabled:
        yield lambda *_: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda *_: bar.advance(task)


@contextmanager
def _database(ctx: typer.Context) -> Iterator[Any]:
    """The settings' database, opened for one command and closed after it."""
    from pipelines.db import connect

    db = connect(_settings(ctx))
    try:
        yield db
    finally:
        db.close()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help="On a failure, also print the Python traceback (stderr). Give it before the command."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Also show what libraries print (Feast, MLflow, warnings) on stderr; it always goes to "
        "STREAMFLOW_HOME/logs/streamflow.log. Give it before the command.",
    ),
) -> None:
    """Read the settings once (``STREAMFLOW_*`` environment variables) and pass them to every command."""
    from pydantic import ValidationError

    ctx.meta[DEBUG_KEY] = debug
    ctx.meta[VERBOSE_KEY] = verbose
    try:
        settings = _settings(ctx)
    except ValidationError as err:
        problems = "; ".join(
            f"STREAMFLOW_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in err.errors()
        )
        _fail(ctx, f"bad settings: {problems}", 2, "--json" in sys.argv[1:])
    level = logging.getLevelName(settings.log_level.upper())
    root = logging.getLogger()
    if not any(isinstance(h, _OutputHandler) for h in root.handlers):
        handler = _OutputHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if isinstance(level, int):
        root.setLevel(level)
    # warnings (SQLAlchemy's, dask's …) are written to sys.stderr when raised: the log file during a command


# ------------------------------------------------------------------------------------------------ data generate


@data_app.command("generate")
@command
def data_generate(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Folder to write month_000, month_001, … into."),
    users: int = typer.Option(7043, "--users", help="Users in month_000."),
    months: int = typer.Option(2, "--months", help="Number of month folders."),
    seed: int = typer.Option(42, "--seed"),
    drift: list[str] = typer.Option([], "--drift", help="FEATURE=SHIFT, repeatable (numeric: ×(1+SHIFT))."),
    drift_start: int = typer.Option(1, "--drift-start", help="First month index the drift knobs act on."),
    churn_shift: float = typer.Option(0.0, "--churn-shift", help="Added to the churn log-odds from --drift-start."),
    concept_shift: float = typer.Option(
        0.0, "--concept-shift", help="0..1: blend of a different churn model from --drift-start (concept drift)."
    ),
    add_ons: bool = typer.Option(False, "--add-ons", help="Also write the four add_on_* columns."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Write month folders in the course data format."""
    from pipelines.generate import generate, parse_drift

    specs = [parse_drift(d) for d in drift]
    with _progress(months, "generating months", not as_json) as tick:
        result = generate(
            out,
            users=users,
            months=months,
            seed=seed,
            drift=specs,
            drift_start=drift_start,
            churn_shift=churn_shift,
            concept_shift=concept_shift,
            add_ons=add_ons,
            progress=tick,
        )
    payload = {
        "out": str(out),
        "months": [
            {
                "folder": str(m.folder),
                "as_of": m.as_of.isoformat(),
                "users": m.users,
                "churn_rate": round(m.churn_rate, 4),
            }
            for m in result.months
        ],
    }
    if not as_json:
        table = RichTable("folder", "as_of", "users", "churn rate", title="generated")
        for m in result.months:
            table.add_row(str(m.folder), m.as_of.isoformat(), f"{m.users:,}", f"{m.churn_rate:.1%}")
        _out.print(table)
    return payload


# ------------------------------------------------------------------------------------------------ ingest / snapshot


@app.command()
@command(changes_state=True)
def ingest(
    ctx: typer.Context,
    month_dir: Path = typer.Argument(..., help="A month folder (month_NNN) with the six CSV files."),
    as_of: str | None = typer.Option(None, "--as-of", help="YYYY-MM-DD; inferred from month_NNN when omitted."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Validate a month folder and load it; bad rows are quarantined, never lost."""
    from pipelines.ingest import check_month_dir, ingest_month
    from pipelines.months import infer_as_of, parse_as_of
    from pipelines.tables import RAW_TABLES

    settings = _settings(ctx)
    given = parse_as_of(as_of) if as_of is not None else None
    check_month_dir(month_dir)
    when = given or infer_as_of(month_dir)
    with _database(ctx) as db:
        with _progress(len(RAW_TABLES), f"validating {month_dir.name}", not as_json) as tick:
            result = ingest_month(db, settings, month_dir, when, progress=tick)
    if not as_json:
        table = RichTable("table", "input", "loaded", "quarantined", title=f"ingested {month_dir} (as_of {when})")
        for name, c in result.tables.items():
            table.add_row(name, f"{c['input']:,}", f"{c['loaded']:,}", f"{c['quarantined']:,}")
        _out.print(table)
        if result.quarantined:
            _out.print(f"quarantine report: {result.report_csv}")
    return result.to_json()


@app.command()
@command(changes_state=True)
def snapshot(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of an ingested month."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Freeze an ingested month into the four *_snapshots tables."""
    from pipelines.months import parse_as_of
    from pipelines.snapshot import take_snapshot

    when = parse_as_of(as_of)
    with _database(ctx) as db:
        result = take_snapshot(db, when)
    if not as_json:
        table = RichTable("snapshot table", "rows", title=f"snapshot as_of {when}")
        for name, rows in result.rows.items():
            table.add_row(name, f"{rows:,}")
        _out.print(table)
    return result.to_json()


@features_app.command("apply")
@command(changes_state=True)
def features_apply(ctx: typer.Context, as_json: bool = JsonOption) -> dict[str, Any]:
    """Register the feature_repo definitions in the Feast registry (idempotent)."""
    from pipelines.features import apply_repo

    result = apply_repo(_settings(ctx))
    if not as_json:
        _out.print(
            f"applied {len(result.feature_views)} feature views, feature service(s) "
            f"{', '.join(result.feature_services)}: {len(result.features)} features"
        )
    return result.to_json()


@features_app.command("materialize")
@command(changes_state=True)
def features_materialize(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of a snapshot."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Load the snapshot of an as_of into the online store (incremental, idempotent)."""
    from pipelines.features import materialize
    from pipelines.months import parse_as_of

    when = parse_as_of(as_of)
    settings = _settings(ctx)
    with _database(ctx) as db:
        result = materialize(settings, db, when)
    if not as_json:
        _out.print(result.skipped or f"materialized as_of {when}: {', '.join(result.feature_views)}")
    return result.to_json()


@dataset_app.command("build")
@command(changes_state=True)
def dataset_build(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of a snapshot with labels."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Build the training set of an as_of (parquet + JSON manifest)."""
    from pipelines.features import build_dataset
    from pipelines.months import parse_as_of

    when = parse_as_of(as_of)
    settings = _settings(ctx)
    with _database(ctx) as db:
        result = build_dataset(settings, db, when)
    if not as_json:
        m = result.manifest
        _out.print(
            f"training set as_of {when}: {m['rows']:,} rows, label rate {m['label_rate']:.1%}, "
            f"{len(m['features'])} features from {m['feature_service']} -> {result.path}"
        )
    return result.to_json()


@app.command()
@command(changes_state=True)
def train(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of a snapshot with labels."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="auto (default: the family 5-fold CV on the training split prefers among logreg, spline and hgb), "
        "or one family: hgb, rf (course baseline), logreg, spline.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Split and model seed (default STREAMFLOW_SEED)."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Train on an as_of, log the run in MLflow, register a new 'challenger' version."""
    from pipelines.months import parse_as_of
    from pipelines.train import train as train_model

    when = parse_as_of(as_of)
    with _database(ctx) as db:
        result = train_model(_settings(ctx), db, when, kind=model, seed=seed)
    if not as_json:
        m = result.metrics
        _out.print(
            f"trained {result.model} on {when}: ROC AUC {m['roc_auc']:.4f}, F1 {m['f1']:.4f}, accuracy "
            f"{m['accuracy']:.4f} (threshold {result.threshold:.3f}); run {result.run_id}, "
            f"streamflow_churn version {result.model_version} (alias challenger)"
        )
    return result.to_json()


@app.command()
@command(changes_state=True)
def promote(
    ctx: typer.Context,
    rollback: bool = typer.Option(False, "--rollback", help="Restore the previous champion."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """The gate: promote the challenger to 'production' only if it beats the champion."""
    from pipelines.train import promote as run_gate

    with _database(ctx) as db:
        result = run_gate(_settings(ctx), db, rollback=rollback)
    if not as_json:
        _out.print(_gate_line(result))
    return result.to_json()


def _gate_line(result: Any) -> str:
    if result.decision == "rolled_back":
        return f"rolled back: production is version {result.production_version} again (was {result.champion_version})"
    reason = getattr(result, "reason", None)  # the gate's own words (gate.reason), absent on older versions
    if reason:
        return f"gate {result.decision.upper()}: challenger v{result.challenger_version}: {reason}; " + (
            f"production = v{result.production_version}"
        )
    champion = "none" if result.champion_auc is None else f"{result.champion_auc:.4f} (v{result.champion_version})"
    return (
        f"gate {result.decision.upper()}: challenger v{result.challenger_version} AUC {result.challenger_auc:.4f} vs "
        f"champion {champion} on the held-out rows of {result.evaluated_on} (margin {result.margin:g}); "
        f"production = v{result.production_version}"
    )


# ------------------------------------------------------------------------------------------------ the loop


@app.command()
@command(changes_state=True)
def drift(
    ctx: typer.Context,
    current_as_of: str = typer.Option(..., "--current-as-of", help="YYYY-MM-DD of the new month (B)."),
    reference_as_of: str | None = typer.Option(
        None, "--reference-as-of", help="YYYY-MM-DD to compare with (A); default the production model's as_of."
    ),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Evidently drift (features, churn_label, predictions) + the production model's AUC on B -> RETRAIN|NO_ACTION."""
    from pipelines.drift import run_drift
    from pipelines.months import parse_as_of

    current = parse_as_of(current_as_of)
    reference = parse_as_of(reference_as_of) if reference_as_of is not None else None
    with _database(ctx) as db:
        result = run_drift(_settings(ctx), db, current, reference)
    if not as_json:
        _print_drift(result)
    return result.to_json()


def _print_drift(result: Any) -> None:
    table = RichTable("column", "test", "score", "drifted", title=(
        f"drift {result.reference_as_of} -> {result.current_as_of} (model v{result.model_version}, "
        f"{result.rows[result.reference_as_of.isoformat()]:,} vs {result.rows[result.current_as_of.isoformat()]:,} "
        "rows)"
    ))  # fmt: skip
    comp = result.comparison
    rows = [*comp.features, *(c for c in (comp.target, comp.prediction) if c is not None)]
    for column in rows:
        flag = "[red]yes[/]" if column.drifted else "no"
        table.add_row(column.column, column.method, f"{column.score:.3f}", flag)
    _out.print(table)
    if result.realized_auc is not None:
        _out.print(
            f"realized ROC AUC on {result.current_as_of}: {result.realized_auc:.4f} "
            f"(validation {result.validation_auc:.4f})"
        )
    _line(result.line())


@app.command()
@command(changes_state=True)
def retrain(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of the month to train the challenger on."),
    model: str | None = typer.Option(
        None, "--model", help="auto (default: chosen by cross-validation), or hgb, rf, logreg, spline."
    ),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Train a challenger on an as_of and run the gate; the running predictor picks up a promotion by itself."""
    from pipelines.monthly import retrain as run_retrain
    from pipelines.months import parse_as_of

    when = parse_as_of(as_of)
    with _database(ctx) as db:
        result = run_retrain(_settings(ctx), db, when, kind=model)
    if not as_json:
        if result.reused_version and result.trained is None:
            _out.print(f"version {result.reused_version} was already trained on this training set of {when}")
        _out.print(_gate_line(SimpleNamespace(**result.gate)))
    return result.to_json()


@app.command()
@command(changes_state=True)
def monthly(
    ctx: typer.Context,
    month_dir: Path | None = typer.Argument(
        None, metavar="MONTH_DIR", help="A month folder (month_NNN) with the six CSV files."
    ),
    data_dir: Path | None = typer.Option(
        None, "--next", metavar="DATA_DIR", help="Run the oldest month_NNN folder under DATA_DIR not ingested yet."
    ),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """The whole month: ingest -> snapshot -> materialize -> drift -> retrain if needed -> gate (safe to re-run).

    Give MONTH_DIR, or --next DATA_DIR: the oldest month_NNN folder under DATA_DIR whose as_of is not ingested
    yet (what the monthly CronWorkflow runs: its arguments are fixed).

    --next when every folder is ingested: nothing changes, exit 0; with --json
    {"ok": true, "decision": "NONE", "month_dir": null, "as_of": null, "reasons": ["nothing to do: ..."],
    "data_dir": ..., "latest_month_dir": ..., "latest_as_of": ...}.
    A month that ran: {"ok": true, "decision": "RETRAIN|NO_ACTION|BOOTSTRAP", "month_dir": ..., "as_of": ...,
    "reasons": [...], "production_version": ..., and each step's result}.
    """
    from pipelines.monthly import next_month, run_monthly

    if (month_dir is None) == (data_dir is None):
        raise InvalidInput("give a month folder (streamflow monthly MONTH_DIR) or --next DATA_DIR, not both")
    log = (lambda msg: None) if as_json else _log_line
    with _database(ctx) as db:
        if data_dir is not None:
            found = next_month(db, data_dir)
            if found.month_dir is None:
                if not as_json:
                    _line(found.line)
                return found.to_json()
            month_dir = found.month_dir
            log(f"next month under {data_dir}: {month_dir.name}")
        result = run_monthly(_settings(ctx), db, month_dir, log=log)
    if not as_json:
        _out.print(
            f"{month_dir.name} (as_of {result.as_of}): {result.decision}; production = v{result.production_version}"
        )
    return {"ok": True, **result.to_json()}


@app.command()
@command(changes_state=True)
def score(
    ctx: typer.Context,
    as_of: str = typer.Option(..., "--as-of", help="YYYY-MM-DD of the snapshot whose users are scored."),
    top: int | None = typer.Option(
        None, "--top", min=1, metavar="N", help="Rows of the CSV list (default: the top decile)."
    ),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """Every user of the as_of's snapshot scored by the production model: the churn_scores table, a parquet of all
    and a CSV of the top N under STREAMFLOW_HOME/scores/<as_of>/, one MLflow run (safe to re-run)."""
    from pipelines.metrics import quietly, record_scores
    from pipelines.months import parse_as_of
    from pipelines.score import score as run_score

    when = parse_as_of(as_of)
    settings = _settings(ctx)
    with _database(ctx) as db:
        result = run_score(settings, db, when, top=top)
    quietly(record_scores, settings, result)
    if not as_json:
        _print_scores(result.to_json())
    return {"ok": True, **result.to_json()}


def _print_scores(scored: dict[str, Any]) -> None:
    # the reasons are what people read: the columns are few and narrow so that a reason such as
    # "failed_payments_90d=3 (+0.912)" holds on one line of an 80-column terminal or a CI log (never cut by "…").
    # Label and decile are in the CSV and the table.
    table = RichTable("rank", "user_id", "p(churn)", Column("reasons: feature=value (log-odds)", overflow="fold"),
                      title=(
        f"churn list of {scored['as_of']} (model version {scored['model_version']}, {scored['rows']:,} users, "
        f"{scored['share_above_threshold']:.1%} at or above the threshold {scored['threshold']:.3f})"
    ))  # fmt: skip
    for row in scored["head"]:
        table.add_row(str(row["rank"]), row["user_id"], f"{row['probability']:.4f}",
                      "\n".join(row.get("reasons") or ["—"]))  # fmt: skip
    _out.print(table)
    _line(f"top {scored['top_n']:,}: {scored['csv']}")
    _line(f"every user: {scored['parquet']}")


@app.command()
@command
def status(ctx: typer.Context, as_json: bool = JsonOption) -> dict[str, Any]:
    """Rows per table and as_of, quarantined rows, and snapshot counts."""
    from pipelines.status import collect_status

    settings = _settings(ctx)
    with _database(ctx) as db:
        state = collect_status(db, settings)
    if not as_json:
        _print_status(state, settings)
    return state


def _print_status(state: dict[str, Any], settings: Settings) -> None:
    months = state["months"]
    where = redact_url(settings.database_url)
    raw = RichTable("table", *months, "stored", title=f"raw tables, rows per as_of ({where})")
    for name, per_month in state["tables"].items():
        if "all" in per_month:  # users: one row per user, whatever the month
            raw.add_row(name, *("—" for _ in months), f"{per_month['all']:,}")
        else:
            raw.add_row(name, *(f"{per_month.get(m, 0):,}" for m in months), f"{sum(per_month.values()):,}")
    quarantined = state["quarantined_by_as_of"]
    raw.add_row(
        "[red]quarantined rows[/]", *(f"{quarantined.get(m, 0):,}" for m in months), f"{state['quarantined']:,}"
    )
    _out.print(raw)
    snaps = RichTable("snapshot table", *state["snapshot_as_of"], title="snapshots, rows per as_of")
    for name, per_month in state["snapshots"].items():
        snaps.add_row(name, *(f"{per_month.get(m, 0):,}" for m in state["snapshot_as_of"]))
    _out.print(snaps)
    online = state.get("online")
    if online is None:
        return
    if not online["views"]:
        _out.print(f"online store: {online.get('note', 'no feature view')}")
        return
    views = RichTable("feature view", "as_of held", title="online store (Feast), newest materialized as_of")
    for name, held in online["views"].items():
        views.add_row(name, held or "—")
    _out.print(views)
    if not online["consistent"]:
        newest = max((held for held in online["views"].values() if held), default=None)
        _out.print(
            "[bold red]the feature views of the online store disagree[/] (a materialize did not finish): "
            f"run `streamflow features materialize --as-of {newest}`",
            soft_wrap=True,
        )


@app.command()
@command
def smoke(
    ctx: typer.Context,
    url: str = typer.Option(..., "--url", help="The InferenceGraph (v2 body at /) or a /v2/models/…/infer URL."),
    user_ids: list[str] = typer.Option(..., "--user-id", help="A user id to ask for (repeatable)."),
    aliases: list[str] = typer.Option(
        ["production"], "--alias", "--expect-alias", help="Registry alias whose version must answer (repeatable: any)."
    ),
    timeout: float = typer.Option(10.0, "--timeout-seconds", min=0.1, help="How long to wait for the answer."),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """One v2 request through the served path, checked (the chart's `helm test`).

    One probability in [0, 1] and one label 0/1 per id, and model_version equal to the registry's version of the
    alias (STREAMFLOW_MLFLOW_TRACKING_URI). Run too early, exit 1 naming the missing step: MLflow unreachable, no
    model in production (make bootstrap), the predictor without a model yet, ids unknown to the online store (the
    ingest workflow), nothing listening at the URL.
    """
    from pipelines.smoke import run_smoke

    result = run_smoke(_settings(ctx), url, user_ids, aliases, timeout)
    if not as_json:
        versions = ", ".join(f"{alias} = v{v}" for alias, v in result.aliases.items())
        _out.print(
            f"smoke OK: {url} answered {len(result.user_ids)} id(s) with model version {result.model_version} "
            f"({versions}) in {result.seconds * 1000:.0f} ms",
            highlight=False,
            soft_wrap=True,
        )
        for user, proba, label in zip(result.user_ids, result.churn_probability, result.churn_label, strict=True):
            _out.print(f"  {user}: churn_probability {proba:.4f}, churn_label {label}", highlight=False)
    return result.to_json()


# ------------------------------------------------------------------------------------------------ demo


@app.command()
@command(changes_state=True)
def demo(
    ctx: typer.Context,
    users: int = typer.Option(7043, "--users"),
    seed: int = typer.Option(42, "--seed"),
    as_json: bool = JsonOption,
) -> dict[str, Any]:
    """What `make demo` runs: three months through the loop (first model, a calm month, a drifted month), served."""
    from pipelines.demo import run_demo

    settings = _settings(ctx)
    log = (lambda msg: None) if as_json else _log_line
    state = run_demo(settings, users=users, seed=seed, log=log)
    if not as_json:
        _print_status(state, settings)
        months = RichTable("month", "decision", "why", "production", title="the monthly loop")
        for month in state["months_run"]:
            months.add_row(
                Path(month["month_dir"]).name, month["decision"], "; ".join(month["reasons"]),
                f"v{month['production_version']}",
            )  # fmt: skip
        _out.print(months)
        served = state["serve"]
        for key, title in (("before", "before the drifted month"), ("response", "after it")):
            answer = served[key]
            out = {o["name"]: o["data"] for o in answer["outputs"]}
            table = RichTable(
                "user_id", "churn_probability", "churn_label",
                title=f"v2 answer {title} (model version {answer['model_version']})",
            )  # fmt: skip
            for user, proba, label in zip(out["user_id"], out["churn_probability"], out["churn_label"], strict=True):
                table.add_row(user, f"{proba:.4f}", str(label))
            _out.print(table)
        _line(f"state: {settings.home.resolve()}  (inspect it with `streamflow status`)")
        _line(f"drift reports: {(settings.reports_dir / 'evidently').resolve()}")
        _line(
            f"MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
            f"{redact_url(settings.tracking_uri)} "
            "--port 5000"
        )
        _out.print("repeat the request: `streamflow serve` in another terminal, then")
        _line(f"  {served['curl']}")
        if state.get("score"):
            _print_scores(state["score"])
    return state


def _line(text: str) -> None:
    """One line printed whole (soft wrap): a terminal folds it, a copied path or command stays intact."""
    _out.print(text, highlight=False, soft_wrap=True)


def _log_line(message: str) -> None:
    _line(f"[bold cyan]▸[/] {message}")


# ------------------------------------------------------------------------------------------------ serve


@app.command()
@command
def serve(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Start the predictor and the transformer on loopback (ports from STREAMFLOW_*_PORT); Ctrl-C stops both.

    With --json, one object is printed as soon as both are ready (URLs, pids, logs), nothing after.
    """
    import signal as signals

    from model_server.local import LocalServers, curl_line

    settings = _settings(ctx)
    _require_served_model(settings)
    servers = LocalServers(settings)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signals.signal(signals.SIGTERM, stop)
    signals.signal(signals.SIGINT, stop)  # also when started in the background, where SIGINT comes in ignored
    servers.start()
    ready = {
        "transformer": servers.transformer_url,
        "predictor": servers.predictor_url,
        "pids": {name: proc.pid for name, proc in servers.procs.items()},
        "logs": str(servers.log_dir),
    }
    try:
        if as_json:
            sys.__stdout__.write(json.dumps(ready) + "\n")
            sys.__stdout__.flush()
        else:
            _out.print(f"transformer {servers.transformer_url} (v2 + course routes), predictor {servers.predictor_url}")
            _out.print(f"logs in {servers.log_dir}; try:")
            _line(f"  {curl_line(settings, ['<user_id>'])}")
            _out.print("Ctrl-C stops both.")
        code = servers.wait()
        raise StreamflowError(f"a server exited with code {code}; see {servers.log_dir}")
    except KeyboardInterrupt:
        return None
    finally:
        servers.stop()


@app.command()
@command
def monitor(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """A real Prometheus on loopback scraping `streamflow serve`'s servers and a local Pushgateway, with the chart's
    alert rules (Debian's prometheus and prometheus-pushgateway); Ctrl-C stops them.

    The figures pipeline steps already wrote (STREAMFLOW_HOME/metrics) are pushed at start; run later steps with
    STREAMFLOW_PUSHGATEWAY_URL set to the printed Pushgateway URL. With --json, one object once ready, nothing after.
    """
    import signal as signals

    from pipelines.monitor import LocalMonitor

    watch = LocalMonitor(_settings(ctx))

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signals.signal(signals.SIGTERM, stop)
    signals.signal(signals.SIGINT, stop)
    watch.start()
    ready = {
        "prometheus": watch.prometheus_url,
        "pushgateway": watch.pushgateway_url,
        "rules": str(watch.rules),
        "pids": {name: proc.pid for name, proc in watch.procs.items()},
        "logs": str(watch.folder),
    }
    try:
        if as_json:
            sys.__stdout__.write(json.dumps(ready) + "\n")
            sys.__stdout__.flush()
        else:
            url = watch.prometheus_url
            _line(f"Prometheus {url} (targets: {url}/targets, alerts: {url}/alerts), Pushgateway "
                  f"{watch.pushgateway_url}")  # fmt: skip
            _line("servers: `make serve` in another terminal; pipeline figures: run steps with "
                  f"STREAMFLOW_PUSHGATEWAY_URL={watch.pushgateway_url}")  # fmt: skip
            _line("dashboards: import charts/streamflow/dashboards/*.json into a Grafana pointed at "
                  f"{url}; Ctrl-C stops both.")  # fmt: skip
        code = watch.wait()
        raise StreamflowError(f"a monitoring process exited with code {code}; see {watch.folder}")
    except KeyboardInterrupt:
        return None
    finally:
        watch.stop(grace=30)


def _require_served_model(settings: Settings) -> None:
    """Locally nothing will promote a model while `serve` waits: a predictor started without one (live, not ready,
    as a fresh cluster's) would only keep `serve` waiting, so say what is missing at once."""
    from pipelines.errors import NotFound
    from pipelines.registry import MODEL_NAME, mlflow_client, version_by_alias

    if version_by_alias(mlflow_client(settings), settings.model_alias) is None:
        raise NotFound(
            f"no {MODEL_NAME}@{settings.model_alias} yet: nothing to serve; run `streamflow demo`, or "
            "`streamflow monthly` on a first month folder"
        )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception as err:  # raised outside a command body (the commands catch their own)
        argv = sys.argv[1:]
        _report(_unexpected(err), 1, "--json" in argv, "--debug" in argv)
        sys.exit(1)


if __name__ == "__main__":
    main()
