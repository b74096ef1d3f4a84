"""The ``file_based`` stores: a module's data in a SQLite file, written before it is acknowledged.

The data stays in memory, where reads find it; the file is the durable copy, read when the module
starts. A write goes into the current batch and the first write of an event-loop turn schedules
the batch's commit (``loop.call_soon``), so every write of one turn shares one transaction (group
commit); the write's answer is a future resolved after that commit. SQLite runs in WAL mode with
``synchronous=NORMAL``: a committed write survives the engine being killed (a power cut may cost
the last commits).

A failed commit (disk full, file unwritable) is rolled back: the writes of its batch are answered
with ``STORE_ERROR`` and memory is put back as the file has it (each statement's ``reload`` reads
back what its writes touched, each write's ``undo`` reverts its change). Reads see a write from the
moment it is made, a turn before its answer.

:class:`Journal` is the file and its batches; :class:`Values` (state, stream) and :class:`Jobs`
(queue) are the tables the modules write through it, with :class:`Statement` and
:class:`ManyRows` statements.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from iii.engine.host import EngineError

__all__ = ["STORE_ERROR", "Jobs", "Journal", "ManyRows", "Statement", "Values"]

log = logging.getLogger("iii.modules")

#: The error code of a write whose commit failed.
STORE_ERROR = "STORE_ERROR"
#: How long a commit waits for another connection holding the file (two modules sharing one).
_BUSY_TIMEOUT_MS = 1000

Parameters = list[tuple[Any, ...]]
#: ``reload(db, parameters)``: see :class:`Statement`.
Reload = Callable[[sqlite3.Connection, Parameters], None]


class Statement:
    """A statement the journal runs once per write of a batch.

    Args:
        sql: the statement.
        reload: after a failed commit, called with the database (rolled back) and the parameters
            of the writes, to put memory back as the file has it.
    """

    def __init__(self, sql: str, reload: Optional[Reload] = None) -> None:
        self.sql = sql
        self.reload = reload

    def run(self, db: sqlite3.Connection, parameters: Parameters) -> None:
        db.executemany(self.sql, parameters)


class ManyRows(Statement):
    """A statement that takes many writes at once: ``{rows}`` in ``template`` becomes ``row``
    repeated (``VALUES (?, ?), (?, ?)…``, ``IN (?, ?…)``). One step for many rows costs about half
    of one step per row (``executemany``) here."""

    #: The row counts a statement is prepared for; a batch goes in chunks of these.
    CHUNKS = (256, 64, 16, 4, 1)

    def __init__(self, template: str, row: str, reload: Optional[Reload] = None) -> None:
        super().__init__(template, reload)
        self._sql = {count: template.format(rows=", ".join([row] * count)) for count in self.CHUNKS}

    def run(self, db: sqlite3.Connection, parameters: Parameters) -> None:
        start, end = 0, len(parameters)
        for count in self.CHUNKS:
            while end - start >= count:
                db.execute(self._sql[count], [value for row in parameters[start:start + count] for value in row])
                start += count


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
        self._statements: list[tuple[Statement, Parameters]] = []
        #: What reverts in memory the writes that have an ``undo``, in write order.
        self._undo: list[Callable[[], None]] = []
        #: (future, its result, what to do once committed) of each acknowledged write.
        self._answers: list[tuple[asyncio.Future, Any, Optional[Callable[[], None]]]] = []

    def open(self) -> None:
        """Open (or create) the file; from a coroutine, on the loop the writes will come from.

        Raises:
            sqlite3.Error, OSError: the file cannot be opened or is not a SQLite database.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions: BEGIN / COMMIT here
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
        """The rows of a query (loading, at start)."""
        assert self._db is not None, "the store is not open"
        return self._db.execute(query)

    def write(self, statement: Statement, parameters: tuple[Any, ...], undo: Optional[Callable[[], None]] = None) -> None:
        """Add a write to this turn's batch; ``undo`` reverts its change in memory if the commit
        fails."""
        if not self._commit_scheduled:
            self._schedule()
        statements = self._statements
        if statements and statements[-1][0] is statement:
            statements[-1][1].append(parameters)
        else:
            statements.append((statement, [parameters]))
        if undo is not None:
            self._undo.append(undo)

    def acknowledge(self, result: Any, then: Optional[Callable[[], None]] = None) -> asyncio.Future:
        """A future resolved to ``result`` once every write made so far is committed (``then`` is
        run first), or failed with ``STORE_ERROR`` if that commit fails."""
        if not self._commit_scheduled:
            self._schedule()
        future = self._loop.create_future()  # type: ignore[union-attr]
        self._answers.append((future, result, then))
        return future

    def _schedule(self) -> None:
        assert self._loop is not None, "the store is not open"
        self._commit_scheduled = True
        self._loop.call_soon(self.commit)

    def commit(self) -> None:
        """Commit the batch and answer its writes (the loop calls this once per turn)."""
        statements, undo, answers = self._statements, self._undo, self._answers
        self._statements, self._undo, self._answers = [], [], []
        self._commit_scheduled = False
        if not statements and not answers:  # close() committed it already
            return
        db = self._db
        if db is None:  # closed meanwhile: nothing can be kept any more
            error: Optional[Exception] = sqlite3.ProgrammingError("the store is closed")
        else:
            error = None
            try:
                if statements:
                    db.execute("BEGIN")
                    for statement, parameters in statements:
                        statement.run(db, parameters)
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
        for statement, parameters in statements:
            if statement.reload is not None and db is not None:
                try:
                    statement.reload(db, parameters)
                except sqlite3.Error as reload_error:
                    log.error("store %s: cannot read back what was not stored: %s", self.path, reload_error)
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
    stream, group, item), written through a :class:`Journal`.

    Args:
        restore: ``restore(key, value or None)`` puts one key back in memory as the file has it
            (after a failed commit).
    """

    def __init__(
        self, journal: Journal, table: str, key_columns: tuple[str, ...],
        restore: Callable[[tuple[str, ...], Optional[bytes]], None],
    ) -> None:
        self.journal = journal
        self._restore = restore
        self._key_size = len(key_columns)
        keys = ", ".join(key_columns)
        match = " AND ".join(f"{column} = ?" for column in key_columns)
        self._select = f"SELECT {keys}, value FROM {table}"
        self._get = f"SELECT value FROM {table} WHERE {match}"
        # An upsert updates the row in place: about half the work of INSERT OR REPLACE here.
        self._put = ManyRows(
            f"INSERT INTO {table} ({keys}, value) VALUES {{rows}} ON CONFLICT ({keys}) DO UPDATE SET value = excluded.value",
            f"({', '.join('?' * (len(key_columns) + 1))})",
            self._reload,
        )
        self._delete = Statement(f"DELETE FROM {table} WHERE {match}", self._reload)

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

    def put(self, key_and_value: tuple[Any, ...]) -> None:
        """Keep a value: ``(*key, value)``."""
        self.journal.write(self._put, key_and_value)

    def delete(self, key: tuple[str, ...]) -> None:
        self.journal.write(self._delete, key)

    def _reload(self, db: sqlite3.Connection, parameters: Parameters) -> None:
        for key in dict.fromkeys(written[: self._key_size] for written in parameters):
            row = db.execute(self._get, key).fetchone()
            self._restore(key, None if row is None else row[0])


class Jobs:
    """The queue module's table: every job not yet acknowledged and every dead letter, each kept
    as its encoded Job under its ``row``. Rows are numbered in order, so a new job goes at the end
    of the table and the order of the rows is the order of the queues."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS queue_jobs (row INTEGER PRIMARY KEY, queue TEXT NOT NULL, "
        "dead INTEGER NOT NULL, job BLOB NOT NULL);"
    )
    _INSERT = ManyRows("INSERT INTO queue_jobs (row, queue, dead, job) VALUES {rows}", "(?, ?, 0, ?)")
    _UPDATE = Statement("UPDATE queue_jobs SET job = ? WHERE row = ?")
    _MOVE = Statement("UPDATE queue_jobs SET row = ?, dead = ?, job = ? WHERE row = ?")
    _DELETE = ManyRows("DELETE FROM queue_jobs WHERE row IN ({rows})", "?")

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._last_row = 0

    def load(self) -> Iterator[tuple[int, str, bool, bytes]]:
        """``(row, queue, dead, encoded job)`` in order."""
        for row, queue, dead, job in self.journal.rows("SELECT row, queue, dead, job FROM queue_jobs ORDER BY row"):
            self._last_row = row
            yield row, queue, bool(dead), job

    def add(self, queue: str, job: bytes) -> int:
        """A new job, after every other; returns its row."""
        self._last_row += 1
        self.journal.write(self._INSERT, (self._last_row, queue, job))
        return self._last_row

    def update(self, row: int, job: bytes) -> None:
        """The job changed (an attempt failed); it keeps its place."""
        self.journal.write(self._UPDATE, (job, row))

    def move(self, row: int, job: bytes, *, dead: bool, undo: Callable[[], None]) -> int:
        """The job went to the dead letters, or back from them to the end of its queue; returns
        its new row."""
        self._last_row += 1
        self.journal.write(self._MOVE, (self._last_row, int(dead), job, row), undo)
        return self._last_row

    def remove(self, row: int, undo: Callable[[], None]) -> None:
        """The job is done (acknowledged) or its dead letter discarded."""
        self.journal.write(self._DELETE, (row,), undo)
