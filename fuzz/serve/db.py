"""The bug database of `procfuzz serve`: SQLite under the state directory by default, or
PostgreSQL given a ``postgresql://`` URL, behind one small storage layer.

Both speak the same SQL here: ``?`` placeholders (rewritten for psycopg), ``ON CONFLICT``
upserts, ``RETURNING``.  Only the identity column differs.  The schema is versioned: MIGRATIONS
run in order, each once, recorded in ``schema_version``; a database newer than this code is
refused rather than misread.  Rows come back as dicts.  One connection per Database, serialised
by a lock: the manager's threads share it, and SQLite in WAL mode lets readers of other
processes (a second `procfuzz` looking at the file) in meanwhile.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DB_FILE = "procfuzz.sqlite3"

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE kernels (
        id {id}, name TEXT NOT NULL UNIQUE, pin TEXT, zoo TEXT, label TEXT NOT NULL DEFAULT '',
        workers INTEGER NOT NULL DEFAULT 1, leak_every INTEGER NOT NULL DEFAULT 10,
        enabled INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE campaigns (
        id {id}, kernel_id INTEGER NOT NULL REFERENCES kernels(id), started BIGINT NOT NULL,
        ended BIGINT, out_dir TEXT NOT NULL, programs BIGINT NOT NULL DEFAULT 0,
        findings BIGINT NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '');
    CREATE TABLE bugs (
        id {id}, bug_key TEXT NOT NULL UNIQUE, cls TEXT NOT NULL, signatures TEXT NOT NULL,
        status TEXT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        count INTEGER NOT NULL, kernels TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
        representative TEXT NOT NULL);
    CREATE TABLE findings (
        id {id}, bug_id INTEGER NOT NULL REFERENCES bugs(id), program_id TEXT NOT NULL,
        directory TEXT NOT NULL UNIQUE, kernel TEXT NOT NULL, recorded BIGINT NOT NULL,
        source TEXT NOT NULL);
    CREATE TABLE reproducibility (
        bug_id INTEGER NOT NULL REFERENCES bugs(id), kernel TEXT NOT NULL, pin TEXT NOT NULL,
        diverged INTEGER NOT NULL, runs INTEGER NOT NULL, checked BIGINT NOT NULL,
        fixed INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (bug_id, kernel));
    CREATE TABLE stat_points (
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id), minute BIGINT NOT NULL,
        programs BIGINT NOT NULL, programs_per_second DOUBLE PRECISION NOT NULL,
        features INTEGER NOT NULL, corpus INTEGER NOT NULL, restarts INTEGER NOT NULL,
        findings INTEGER NOT NULL, PRIMARY KEY (campaign_id, minute));
    CREATE TABLE follow_ups (
        bug_id INTEGER PRIMARY KEY REFERENCES bugs(id), state TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '', updated BIGINT NOT NULL,
        directory TEXT NOT NULL DEFAULT '');
    CREATE INDEX findings_bug ON findings (bug_id);
    """,
    # 2: kernel coverage over time.
    """
    ALTER TABLE stat_points ADD COLUMN kernel_functions INTEGER NOT NULL DEFAULT 0;
    """,
)

_IDENTITY = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


class DatabaseError(Exception):
    """The database cannot be opened or is of a newer schema than this procfuzz."""


class Database:
    """A connection and the dialect it speaks; ``transaction()`` is the only way in."""

    def __init__(self, url_or_path: str | Path):
        text = str(url_or_path)
        self.dialect = "postgresql" if text.startswith(("postgresql://", "postgres://")) else "sqlite"
        self.where = _redacted(text) if self.dialect == "postgresql" else text
        self._lock = threading.RLock()
        self._url = text
        self._conn = _connect_postgresql(text) if self.dialect == "postgresql" else _connect_sqlite(Path(text))
        self.migrate()

    @contextmanager
    def transaction(self) -> Iterator["Cursor"]:
        """Everything inside commits together or not at all."""
        with self._lock:
            if self.dialect == "postgresql" and self._conn.closed:   # the server restarted: a new session
                self._conn = _connect_postgresql(self._url)
            cursor = Cursor(self._conn.cursor(), self.dialect)
            try:
                yield cursor
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cursor.close()

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns it."""
        with self.transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = cur.all("SELECT version FROM schema_version")
            version = rows[0]["version"] if rows else 0
            if not rows:
                cur.execute("INSERT INTO schema_version (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise DatabaseError(f"{self.where}: schema version {version} is newer than this procfuzz "
                                f"({len(MIGRATIONS)}): upgrade procfuzz")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            with self.transaction() as cur:
                for statement in MIGRATIONS[number - 1].format(id=_IDENTITY[self.dialect]).split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("UPDATE schema_version SET version = ?", (number,))
        return len(MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Cursor:
    """SQL with ``?`` placeholders in either dialect; rows as dicts."""

    def __init__(self, cursor, dialect: str):
        self._cursor, self._dialect = cursor, dialect

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._cursor.execute(sql.replace("?", "%s") if self._dialect == "postgresql" else sql, params)

    def all(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        self.execute(sql, params)
        if self._cursor.description is None:
            return []
        names = [column[0] for column in self._cursor.description]
        return [dict(zip(names, row)) for row in self._cursor.fetchall()]

    def one(self, sql: str, params: tuple = ()) -> dict[str, Any] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        self._cursor.close()


def _connect_sqlite(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=FULL: a commit that returned survives kill -9 and power loss alike.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _connect_postgresql(url: str):
    try:
        import psycopg
    except ImportError as err:
        raise DatabaseError(f"a postgresql:// database needs psycopg: pip install 'psycopg[binary]' ({err})") from None
    try:
        return psycopg.connect(url)
    except psycopg.Error as err:
        raise DatabaseError(f"cannot connect to {_redacted(url)}: {err}") from None


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"
