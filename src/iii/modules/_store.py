"""The ``file_based`` stores: a module's data in a SQLite file, written before it is acknowledged.

The data stays in memory, where reads find it; the file is the durable copy, read when the module
starts. A write goes into the current batch and the first write of an event-loop turn schedules
the batch's commit (``loop.call_soon``), so every write of one turn shares one transaction (group
commit); the write's answer is a future resolved after that commit. SQLite runs in WAL mode with
``synchronous=NORMAL``: a committed write survives the engine being killed (a power cut may cost
the last commits).

A failed commit (disk full, file unwritable) is rolled back: the writes of its batch are answered
with ``STORE_ERROR``, and each write's ``undo`` puts memory back as the file has it. Reads see a
write from the moment it is made, a turn before its answer.

:class:`Journal` is the file and its batches; :class:`Values` (state, stream) and :class:`Jobs`
(queue) are the tables the modules write through it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from iii.engine.host import EngineError

__all__ = ["STORE_ERROR", "Jobs", "Journal", "Values"]

log = logging.getLogger("iii.modules")

#: The error code of a write whose commit failed.
STORE_ERROR = "STORE_ERROR"
#: How long a commit waits for another connection holding the file (two modules sharing one).
_BUSY_TIMEOUT_MS = 1000


class Journal:
    """One SQLite file and the batch of writes waiting for the next commit.

    Args:
        path: the database file (created with its directory).
        schema: the ``CREATE TABLE IF NOT EXISTS`` statements of its tables.
    """

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._db: Optional[sqlite3.Connection] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._commit_scheduled = False
        #: Runs of one statement with the parameters of each write, in write order.
        self._statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._undo: list[Callable[[], None]] = []
        #: (future, its result, what to do once committed) of each acknowledged write.
        self._answers: list[tuple[asyncio.Future, Any, Optional[Callable[[], None]]]] = []

    def open(self) -> None:
        """Open (or create) the file; from a coroutine, on the loop the writes will come from.

        Raises:
            sqlite3.Error, OSError: the file cannot be opened or is not a SQLite database.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(self._schema)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise sqlite3.DatabaseError(f"{self.path}: {exc} (file_path must name a SQLite database)") from None
        self._db = db
        self._loop = asyncio.get_running_loop()
        log.info("store %s opened", self.path)

    def rows(self, query: str) -> Iterator[tuple[Any, ...]]:
        assert self._db is not None, "the store is not open"
        return self._db.execute(query)

    def write(self, statement: str, parameters: tuple[Any, ...], undo: Optional[Callable[[], None]] = None) -> None:
        """Add a write to this turn's batch; ``undo`` reverts its change in memory if the commit
        fails."""
        self._schedule()
        statements = self._statements
        if statements and statements[-1][0] == statement:
            statements[-1][1].append(parameters)
        else:
            statements.append((statement, [parameters]))
        if undo is not None:
            self._undo.append(undo)

    def acknowledge(self, result: Any, then: Optional[Callable[[], None]] = None) -> asyncio.Future:
        """A future resolved to ``result`` once every write made so far is committed (``then`` is
        run first), or failed with ``STORE_ERROR`` if that commit fails."""
        self._schedule()
        assert self._loop is not None
        future = self._loop.create_future()
        self._answers.append((future, result, then))
        return future

    def _schedule(self) -> None:
        if not self._commit_scheduled:
            assert self._loop is not None, "the store is not open"
            self._commit_scheduled = True
            self._loop.call_soon(self.commit)

    def commit(self) -> None:
        """Commit the batch and answer its writes (the loop calls this once per turn)."""
        statements, undo, answers = self._statements, self._undo, self._answers
        self._statements, self._undo, self._answers = [], [], []
        self._commit_scheduled = False
        db = self._db
        if db is None:  # closed meanwhile: nothing can be kept any more
            error: Optional[Exception] = sqlite3.ProgrammingError("the store is closed")
        else:
            error = None
            try:
                if statements:
                    db.execute("BEGIN")
                    for statement, parameters in statements:
                        db.executemany(statement, parameters)
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                error = exc
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as rollback_error:
                        log.error("store %s: rollback failed: %s", self.path, rollback_error)
        if error is None:
            for future, result, then in answers:
                if then is not None:
                    try:
                        then()
                    except Exception:  # one module's bug must not leave the other writes unanswered
                        log.exception("store %s: work after a commit failed", self.path)
                future.set_result(result)
            return
        writes = sum(len(parameters) for _, parameters in statements)
        log.error("store %s: %d writes not stored, answered with %s: %s", self.path, writes, STORE_ERROR, error)
        for revert in reversed(undo):
            revert()
        for future, _, _ in answers:
            future.set_exception(EngineError(STORE_ERROR, f"the write was not stored in {self.path}: {error}"))

    def close(self) -> None:
        """Commit what is pending, then close the file."""
        if self._db is None:
            return
        if self._commit_scheduled:
            self.commit()
        self._db.close()
        self._db = None


class Values:
    """A table of JSON values under a key of several text columns (state: scope, key; stream:
    stream, group, item), written through a :class:`Journal`."""

    def __init__(self, journal: Journal, table: str, key_columns: tuple[str, ...]) -> None:
        self.journal = journal
        keys = ", ".join(key_columns)
        match = " AND ".join(f"{column} = ?" for column in key_columns)
        self._select = f"SELECT {keys}, value FROM {table}"
        self._put = f"INSERT OR REPLACE INTO {table} ({keys}, value) VALUES ({', '.join('?' * (len(key_columns) + 1))})"
        self._delete = f"DELETE FROM {table} WHERE {match}"

    @staticmethod
    def schema(table: str, key_columns: tuple[str, ...]) -> str:
        columns = "".join(f"{column} TEXT NOT NULL, " for column in key_columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {table} ({columns}value BLOB NOT NULL, "
            f"PRIMARY KEY ({', '.join(key_columns)})) WITHOUT ROWID;"
        )

    def load(self) -> Iterator[tuple[Any, ...]]:
        """Every stored row: the key columns, then the value."""
        return self.journal.rows(self._select)

    def put(self, key: tuple[str, ...], value: bytes, undo: Callable[[], None]) -> None:
        self.journal.write(self._put, (*key, value), undo)

    def delete(self, key: tuple[str, ...], undo: Callable[[], None]) -> None:
        self.journal.write(self._delete, key, undo)


class Jobs:
    """The queue module's table: every job not yet acknowledged and every dead letter, by queue,
    in order (``position``), each kept as its encoded Job."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS queue_jobs (queue TEXT NOT NULL, id TEXT NOT NULL, "
        "position INTEGER NOT NULL, dead INTEGER NOT NULL, job BLOB NOT NULL, "
        "PRIMARY KEY (queue, id)) WITHOUT ROWID;"
    )
    _INSERT = "INSERT OR REPLACE INTO queue_jobs (queue, id, position, dead, job) VALUES (?, ?, ?, 0, ?)"
    _UPDATE = "UPDATE queue_jobs SET job = ? WHERE queue = ? AND id = ?"
    _MOVE = "UPDATE queue_jobs SET dead = ?, position = ?, job = ? WHERE queue = ? AND id = ?"
    _DELETE = "DELETE FROM queue_jobs WHERE queue = ? AND id = ?"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._last_position = 0

    def load(self) -> Iterator[tuple[str, bool, bytes]]:
        """``(queue, dead, encoded job)`` in order."""
        self._last_position = next(iter(self.journal.rows("SELECT max(position) FROM queue_jobs")))[0] or 0
        for queue, dead, job in self.journal.rows("SELECT queue, dead, job FROM queue_jobs ORDER BY position"):
            yield queue, bool(dead), job

    def _next_position(self) -> int:
        self._last_position += 1
        return self._last_position

    def add(self, queue: str, job_id: str, job: bytes) -> None:
        """A new job, at the back of its queue."""
        self.journal.write(self._INSERT, (queue, job_id, self._next_position(), job))

    def update(self, queue: str, job_id: str, job: bytes) -> None:
        """The job changed (an attempt failed); it keeps its place."""
        self.journal.write(self._UPDATE, (job, queue, job_id))

    def move(self, queue: str, job_id: str, job: bytes, *, dead: bool, undo: Callable[[], None]) -> None:
        """The job went to the dead letters, or back from them to the back of its queue."""
        self.journal.write(self._MOVE, (int(dead), self._next_position(), job, queue, job_id), undo)

    def remove(self, queue: str, job_id: str, undo: Callable[[], None]) -> None:
        """The job is done (acknowledged) or its dead letter discarded."""
        self.journal.write(self._DELETE, (queue, job_id), undo)
