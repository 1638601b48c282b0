"""One run at a time: the state lock every state-changing ``streamflow`` command holds for its whole duration.

Two runs that change the state at once break it: on an empty Postgres database both create the schema
(``UniqueViolation``), two ``monthly`` that both retrain register two versions of one training set, and in embedded
mode DuckDB refuses the second process with a traceback. So a command that changes the state (see
``pipelines/cli.py``: ingest, snapshot, features apply / materialize, dataset build, train, promote, drift, retrain,
monthly, demo) first takes one lock for the whole state, before it opens anything:

* Postgres mode: a session-level advisory lock (``pg_try_advisory_lock``) on :data:`LOCK_KEY`, held on a connection
  of its own until the command ends. The server releases it when that connection goes, a killed run included
  (TCP keepalives bound how long a vanished host keeps it). The lock is per database: the database *is* the state.
  Session-level advisory locks need a real session: a pooler in transaction mode in front of the database would
  break them (connect the pipeline to Postgres directly).
* Embedded mode: ``flock`` on ``STREAMFLOW_HOME/streamflow.lock`` (beside the DuckDB file), released by the kernel
  when the process ends, however it ends.

The holder writes who it is (pid, host, command, since when: :class:`Holder`): into the lock file, or into the
table ``streamflow_lock`` (one row per lock key, written only by the lock's holder, so never raced). A second run
reads it and refuses with :class:`~pipelines.errors.StateLocked` (exit code 75), or, given ``wait``, polls until the
lock is free or the time is up.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import Settings
from pipelines.errors import StateLocked, StreamflowError

#: The advisory lock key: the first 8 bytes of SHA-256("streamflow") as a signed bigint (2141912853800021326); fixed, so
#: that every version of StreamFlow takes the same lock.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"streamflow").digest()[:8], "big", signed=True)
LOCK_FILE = "streamflow.lock"
POLL_SECONDS = 0.5
# a holder writes who it is right after taking the lock: a reader that finds nothing yet looks again this long
_HOLDER_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Holder:
    """Who holds the state lock."""

    pid: int | None
    host: str | None
    command: str | None
    since: str | None  # ISO 8601, UTC, seconds

    @classmethod
    def now(cls, command: str) -> Holder:
        since = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return cls(os.getpid(), socket.gethostname(), command, since)

    def describe(self) -> str:
        """``pid 1234 on host x, `monthly` since 2026-12-01T05:01:02Z``."""
        return (
            f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'}, "
            f"`{self.command or '?'}` since {self.since or '?'}"
        )


UNKNOWN = "a run that took it a moment ago (it has not said who it is yet)"


class StateLock(ABC):
    """One attempt at the lock at a time; :func:`state_lock` does the waiting."""

    @abstractmethod
    def try_acquire(self, command: str) -> bool:
        """Take the lock without waiting and record the holder; False when another run holds it."""

    @abstractmethod
    def holder(self) -> Holder | None:
        """Who holds the lock now, as far as it said; None when nobody does or it has not said yet."""

    @abstractmethod
    def close(self) -> None:
        """Release the lock (when held) and what it holds open."""

    def current_holder(self) -> Holder | None:
        """:meth:`holder`, looked at again for a moment when the holder has only just taken the lock."""
        deadline = time.monotonic() + _HOLDER_GRACE_SECONDS
        while (found := self.holder()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


class FileLock(StateLock):
    """Embedded mode: ``flock`` on a file beside the database; the file holds the holder as JSON while held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StreamflowError(
                f"cannot open the state lock {path}: {err.strerror or err} (STREAMFLOW_HOME must be a writable folder)"
            ) from None

    def try_acquire(self, command: str) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._held = True
        data = json.dumps(asdict(Holder.now(command))).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        return True

    def holder(self) -> Holder | None:
        raw = os.pread(self._fd, 64 * 1024, 0)
        try:
            return Holder(**json.loads(raw))
        except (ValueError, TypeError):  # empty (free, or just taken) or being written
            return None

    def close(self) -> None:
        try:
            if self._held:
                os.ftruncate(self._fd, 0)  # a stale holder is never shown: the next holder starts from empty
        finally:
            os.close(self._fd)  # releases the flock


_HOLDER_DDL = """CREATE TABLE IF NOT EXISTS streamflow_lock (
    lock_key BIGINT PRIMARY KEY,
    backend_pid INTEGER NOT NULL,
    pid INTEGER,
    host TEXT,
    command TEXT,
    since TEXT
)"""
# the row counts only while its backend holds the advisory lock: a dead holder's row is never shown
_HOLDER_SQL = """
SELECT h.pid, h.host, h.command, h.since
FROM streamflow_lock h JOIN pg_locks l ON l.pid = h.backend_pid
WHERE h.lock_key = %(key)s AND l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %(hi)s AND l.objid::bigint = %(lo)s AND l.objsubid = 1
"""


class PostgresLock(StateLock):
    """Postgres mode: a session-level advisory lock on a connection of its own."""

    def __init__(self, url: str) -> None:
        from pipelines.db import open_postgres

        self._con = open_postgres(
            url, application_name="streamflow state lock", keepalives=1, keepalives_idle=30,
            keepalives_interval=10, keepalives_count=3,
        )  # fmt: skip
        self._con.autocommit = True

    def try_acquire(self, command: str) -> bool:
        with self._con.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            if not cur.fetchone()[0]:
                return False
            me = Holder.now(command)
            cur.execute(_HOLDER_DDL)
            cur.execute(
                "INSERT INTO streamflow_lock VALUES (%s, pg_backend_pid(), %s, %s, %s, %s) ON CONFLICT (lock_key) "
                "DO UPDATE SET backend_pid = excluded.backend_pid, pid = excluded.pid, host = excluded.host, "
                "command = excluded.command, since = excluded.since",
                (LOCK_KEY, me.pid, me.host, me.command, me.since),
            )
        return True

    def holder(self) -> Holder | None:
        import psycopg2.errors

        key = LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF
        try:
            with self._con.cursor() as cur:
                cur.execute(_HOLDER_SQL, {"key": LOCK_KEY, "hi": key >> 32, "lo": key & 0xFFFF_FFFF})
                row = cur.fetchone()
        except psycopg2.errors.UndefinedTable:  # the very first holder has not written it yet
            return None
        return None if row is None else Holder(*row)

    def close(self) -> None:
        self._con.close()  # ends the session: the server releases the lock


def open_lock(settings: Settings) -> StateLock:
    """The state lock of the settings' backend (not taken yet)."""
    if settings.is_postgres:
        return PostgresLock(settings.database_url)
    return FileLock(settings.home / LOCK_FILE)


@contextmanager
def state_lock(
    settings: Settings,
    command: str,
    *,
    wait: float | None = None,
    on_wait: Callable[[str], None] = lambda _: None,
) -> Iterator[None]:
    """Hold the state lock for the ``with`` body.

    Args:
        command: what the holder is doing, shown to a run that finds the lock taken (``monthly``).
        wait: seconds to wait for a held lock (polling every :data:`POLL_SECONDS`); None or 0: refuse at once.
        on_wait: told once, with the holder, when the lock is held and this run waits.

    Raises:
        StateLocked: another run holds the lock (still, after ``wait`` seconds).
        StreamflowError: the lock cannot be opened (Postgres unreachable, STREAMFLOW_HOME not writable).
    """
    lock = open_lock(settings)
    try:
        _acquire(lock, command, wait or 0.0, on_wait)
        yield
    finally:
        lock.close()


def _acquire(lock: StateLock, command: str, wait: float, on_wait: Callable[[str], None]) -> None:
    deadline = time.monotonic() + wait
    told = False
    while not lock.try_acquire(command):
        holder = lock.current_holder()
        who = UNKNOWN if holder is None else holder.describe()
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" after waiting {wait:g} s" if wait else ""
            raise StateLocked(
                f"another streamflow run holds the state lock{waited}: {who}; retry later or pass --wait SECONDS"
            )
        if not told:
            on_wait(f"waiting up to {wait:g} s for the state lock: another streamflow run holds it: {who}")
            told = True
        time.sleep(min(POLL_SECONDS, left))
