"""Database schema and engine: SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL) for teams.

Every annotation row carries a `version`: a save names the version it was based on and is
applied only if that is still the stored one (`UPDATE ... WHERE version = :seen`), so a stale
write is refused instead of overwriting silently. Transactions are real on SQLite too: the
driver's own transaction handling is switched off and SQLAlchemy emits BEGIN itself (deferred
for reads, so a read transaction sees one snapshot under WAL; IMMEDIATE for writes, so that
concurrent writers wait for the lock instead of failing on a stale snapshot).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import MissingExtra, UsageError

ROLES = ("admin", "annotator")
KINDS = ("annotate", "pointwise", "pairwise")
STATUSES = ("todo", "draft", "done", "skipped", "flagged")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Setting(Base):
    __tablename__ = "dfj_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Annotator(Base):
    __tablename__ = "dfj_annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    __tablename__ = "dfj_datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)  # the data file, absolute


class Item(Base):
    """One row of a dataset. `row` is the canonical row as read (image path relative to the data
    file's folder); `kind` says what people do with it; `double` marks it for two annotators."""

    __tablename__ = "dfj_items"
    __table_args__ = (UniqueConstraint("dataset_id", "sample_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dfj_datasets.id"))
    sample_id: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    image: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    double: Mapped[bool] = mapped_column(Boolean, default=False)
    row: Mapped[dict[str, Any]] = mapped_column(JSON)


class Annotation(Base):
    """One annotator's work on one item; the row exists from the moment the item is assigned
    (status "todo"). `rank` is the order of assignment (0 = first annotator). `choice` is the
    preferred response in the dataset's A/B positions; `swapped` records that the annotator saw
    the two responses the other way round."""

    __tablename__ = "dfj_annotations"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("dfj_items.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("dfj_annotators.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="todo")
    version: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(16), nullable=True)
    artifacts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rationale: Mapped[str | None] = mapped_column(Text, nullable=True)
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    choice: Mapped[str | None] = mapped_column(String(1), nullable=True)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def normalise_url(db: str) -> str:
    """A SQLAlchemy URL, or a plain file path taken as SQLite."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(db: str) -> Engine:
    url = normalise_url(db)
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise UsageError("--db: an in-memory SQLite database would lose every annotation; give a file path")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see module docstring)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("dfj_write") else "BEGIN")

    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise MissingExtra(
                f"--db {url.split('://')[0]}://…: the database driver is not installed ({exc.name}); "
                "for PostgreSQL: pip install 'psycopg[binary]'"
            ) from None
    Base.metadata.create_all(engine)
    return engine


class Store:
    """The engine plus session factories: `read()` for a consistent snapshot, `write()` for a
    transaction that commits on success and rolls back on any error."""

    def __init__(self, db: str):
        self.url = normalise_url(db)
        self.engine = make_engine(db)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            if not self.is_sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session  # closing the session ends the read transaction; loaded objects stay usable

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._sessions() as session:
            session.connection(execution_options={"dfj_write": True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
