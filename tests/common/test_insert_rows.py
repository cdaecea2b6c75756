"""``insert_rows``: many rows in multi-row statements, each row's id without reading it back,
duplicates found by key, and a refusal instead of a guess when the ids are not consecutive."""

from __future__ import annotations

import sqlite3

import pytest

from common.sqlite import ROWS_PER_INSERT, insert_rows


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT UNIQUE, v REAL NOT NULL)")
    c.execute("CREATE TABLE plain (id INTEGER PRIMARY KEY, k TEXT UNIQUE)")
    return c


def test_every_row_gets_its_id_in_order_across_statements(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t (k, v) VALUES ('before', 0)")
    conn.execute("DELETE FROM t")  # AUTOINCREMENT never reuses id 1
    rows = [(f"k{i}", float(i)) for i in range(ROWS_PER_INSERT * 2 + 5)]
    ids = insert_rows(conn, "t", ("k", "v"), rows)
    assert ids == list(range(2, len(rows) + 2))
    stored = dict(conn.execute("SELECT id, k FROM t").fetchall())
    assert all(stored[i] == k for i, (k, _) in zip(ids, rows, strict=True))


def test_with_a_key_duplicates_are_none_and_the_rest_keep_their_ids(conn: sqlite3.Connection) -> None:
    insert_rows(conn, "t", ("k", "v"), [("old", 1.0)], skip_conflicts=True)
    rows = [("a", 1.0), ("old", 2.0), ("b", 3.0), ("a", 4.0), ("c", 5.0)]
    ids = insert_rows(conn, "t", ("k", "v"), rows, skip_conflicts=True)
    assert ids[1] is None
    assert ids[3] is None  # the batch's own repeat
    stored = dict(conn.execute("SELECT k, id FROM t").fetchall())
    assert [ids[0], ids[2], ids[4]] == [stored["a"], stored["b"], stored["c"]]
    assert conn.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == (1.0,)


def test_all_skipped_then_a_full_statement_after_a_partial_one(conn: sqlite3.Connection) -> None:
    """A statement that made nothing answers None for each row; one that skipped some may use
    up ids (SQLite takes an id before it finds the conflict), and the next full statement's ids
    are still its own."""
    insert_rows(conn, "t", ("k", "v"), [(f"s{i}", 1.0) for i in range(3)])
    assert insert_rows(conn, "t", ("k", "v"), [("s0", 1.0), ("s1", 1.0)], skip_conflicts=True) == [None, None]
    partial = [("s2", 1.0)] + [(f"p{i}", 1.0) for i in range(ROWS_PER_INSERT - 1)]
    full = [(f"f{i}", 1.0) for i in range(ROWS_PER_INSERT)]
    ids = insert_rows(conn, "t", ("k", "v"), partial + full, skip_conflicts=True)
    assert ids[0] is None
    stored = dict(conn.execute("SELECT k, id FROM t").fetchall())
    assert ids[1:] == [stored[k] for k, _ in partial[1:] + full]


def test_skipping_conflicts_never_hides_a_broken_row(conn: sqlite3.Connection) -> None:
    """Only a unique conflict is skipped: NOT NULL still raises (not a silent duplicate)."""
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        insert_rows(conn, "t", ("k", "v"), [("a", 1.0), ("b", None)], skip_conflicts=True)


def test_without_skipping_a_conflict_raises_and_nothing_is_guessed(conn: sqlite3.Connection) -> None:
    insert_rows(conn, "t", ("k", "v"), [("x", 1.0)])
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "t", ("k", "v"), [("y", 1.0), ("x", 2.0)])


def test_a_table_whose_ids_it_cannot_know_is_refused(conn: sqlite3.Connection) -> None:
    """Not AUTOINCREMENT and its ids not starting after 0: the ids are not consecutive from
    what ``sqlite_sequence`` says, so it raises instead of answering wrong ids."""
    conn.execute("INSERT INTO plain (id, k) VALUES (100, 'z')")
    with pytest.raises(sqlite3.DatabaseError, match="expected consecutive new ids"):
        insert_rows(conn, "plain", ("k",), [("a",)])
