"""Unit rules of the foundation: tokens, lifecycles, migrations, keys, adapters."""

from __future__ import annotations

import asyncio
import enum
import io
import json
import logging
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

import ipm
from ipm.adapters.sqlite import MIGRATIONS, SchemaTooNew, migrate, open_storage
from ipm.adapters.sqlite.kpis import create_kpi_tables
from ipm.adapters.system import SortableIds
from ipm.api.convert import structure, unstructure
from ipm.api.handlers.cdc import CdcListQuery
from ipm.domain.errors import InvalidRequest, InvalidToken, InvalidTransition, Problem
from ipm.domain.jsoncodec import as_stored, canonical_bytes, dumps, loads
from ipm.domain.kpi import RecordKpi
from ipm.domain.kpi_series import SeriesQuery
from ipm.domain.lifecycle import (
    IMPORT_JOB,
    WEBHOOK,
    Lifecycle,
    LifecycleDefinitionError,
)
from ipm.domain.pagination import PageTokens, TokenScope, clamp_limit

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
filters = st.dictionaries(
    st.sampled_from(["service", "channel_code", "x"]), json_scalars
)


@settings(max_examples=200)
@given(
    position=st.lists(st.one_of(st.integers(), st.text(max_size=10)), max_size=3),
    orgcode=st.sampled_from(["ACME01", "OTHER02"]),
    where=filters,
)
def test_tokens_round_trip(position: list[Any], orgcode: str, where: Any) -> None:
    """A token opens to the position it was issued for, in its own scope."""
    tokens = PageTokens(b"k" * 32)
    scope = TokenScope(orgcode, "/cdc/list", where)

    token = tokens.issue(scope, position)

    assert tokens.open(scope, json.loads(json.dumps(token))) == tuple(position)


@settings(max_examples=200)
@given(position=st.lists(st.integers(), min_size=1, max_size=2), edit=st.integers())
def test_edited_tokens_never_open(position: list[int], edit: int) -> None:
    """Changing the position, the org or the filters makes a token invalid."""
    tokens = PageTokens(b"k" * 32)
    scope = TokenScope("ACME01", "/cdc/list", {"service": "pos"})
    token = tokens.issue(scope, position)

    edited = {**token, "k": [*position[:-1], position[-1] + (edit or 1)]}
    for bad_scope, bad_token in (
        (scope, edited),
        (TokenScope("OTHER02", "/cdc/list", {"service": "pos"}), token),
        (TokenScope("ACME01", "/cdc/list", {"service": "web"}), token),
        (TokenScope("ACME01", "/webhook/list", {"service": "pos"}), token),
    ):
        with pytest.raises(InvalidToken):
            tokens.open(bad_scope, bad_token)


def test_tokens_of_another_deployment_never_open() -> None:
    """A token signed under another deployment key is refused."""
    scope = TokenScope("ACME01", "/cdc/list")
    token = PageTokens(b"a" * 32).issue(scope, [5])

    with pytest.raises(InvalidToken):
        PageTokens(b"b" * 32).open(scope, token)


@given(st.one_of(st.none(), st.integers(-(10**9), 10**9)))
def test_limit_is_always_within_bounds(limit: int | None) -> None:
    """clamp_limit always answers 1-256, and 8 when absent."""
    value = clamp_limit(limit)

    assert 1 <= value <= 256
    assert limit is not None or value == 8


@given(
    st.builds(
        CdcListQuery,
        service=st.none() | st.text(min_size=1, max_size=10),
        logical_guid=st.none() | st.text(min_size=1, max_size=10),
        channel_code=st.none() | st.text(min_size=1, max_size=10),
        action_prefix=st.none() | st.text(min_size=1, max_size=10),
        after_sequence=st.integers(0, 2**62),
    )
)
def test_cattrs_edge_round_trips(query: CdcListQuery) -> None:
    """Unstructuring then structuring a command gives it back unchanged."""
    assert structure(unstructure(query), CdcListQuery) == query


def test_cattrs_edge_reports_pointers() -> None:
    """A body of the wrong shape is an invalid_request naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        structure({"after_sequence": "x", "bogus": 1}, CdcListQuery)

    assert caught.value.details


def test_illegal_move_names_state_move_and_allowed() -> None:
    """An illegal transition says where it was, what was tried and what is allowed."""
    with pytest.raises(InvalidTransition) as caught:
        IMPORT_JOB.check("completed", "processing")

    message = caught.value.message
    assert "completed" in message and "processing" in message
    assert caught.value.status == 409
    with pytest.raises(InvalidTransition, match="allowed from 'active': paused"):
        WEBHOOK.check("active", "active")


@pytest.mark.parametrize(
    ("transitions", "terminal", "initial"),
    [
        ({"a": ("b",)}, frozenset(), "a"),
        ({"a": (), "b": ()}, frozenset(), "a"),
        ({"a": ("b",), "b": ("a",)}, frozenset({"b"}), "a"),
        ({"a": ()}, frozenset(), "z"),
    ],
    ids=["undeclared-target", "unreachable", "terminal-moves", "bad-initial"],
)
def test_bad_lifecycles_fail_when_built(
    transitions: dict[str, tuple[str, ...]], terminal: frozenset[str], initial: str
) -> None:
    """A definition breaking a structural rule cannot be built."""
    with pytest.raises(LifecycleDefinitionError):
        Lifecycle("x", "ipm", initial, transitions, terminal)


def test_lifecycle_version_follows_the_definition() -> None:
    """The version changes when a definition changes, not otherwise."""
    one = Lifecycle("x", "ipm", "a", {"a": ("b",), "b": ()}, frozenset({"b"}))
    same = Lifecycle("x", "ipm", "a", {"a": ("b",), "b": ()}, frozenset({"b"}))
    other = Lifecycle("x", "ipm", "a", {"a": ("b",), "b": ("a",)})

    assert one.version == same.version != other.version


def test_older_database_upgrades_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file with only the first migration gets the rest when opened, and
    says so (a new file's schema is made without a word at INFO)."""
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    with caplog.at_level(logging.INFO, logger="ipm"):
        migrate(conn, MIGRATIONS[:1], 5)
    conn.close()
    assert caplog.records == []

    with caplog.at_level(logging.INFO, logger="ipm"):
        storage = open_storage(db)
    storage.close()

    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"applied {len(MIGRATIONS) - 1} schema migration(s)")

    conn = sqlite3.connect(db)
    applied = [r[0] for r in conn.execute("SELECT name FROM ipm_migrations")]
    assert applied == [name for name, _ in MIGRATIONS]
    conn.close()


def test_opening_a_current_database_does_not_wait_for_writers(tmp_path: Path) -> None:
    """A file with every migration is only read at open: a writer holding the
    lock (a long import in another process) does not hold up the open."""
    db = tmp_path / "current.sqlite"
    ipm.open_sqlite(db).close()
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")

    try:
        storage = open_storage(db, busy_timeout=0.2)
        storage.close()
        # The application too: its deployment keys exist, so it only reads.
        ipm.open_sqlite(db, busy_timeout=0.2).close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    """A file with migrations this ipm does not know is not touched."""
    db = tmp_path / "new.sqlite"
    open_storage(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO ipm_migrations VALUES ('9999_future', 'x')")
    conn.commit()
    conn.close()

    with pytest.raises(SchemaTooNew):
        open_storage(db)


def test_sqlite_pragmas(tmp_path: Path) -> None:
    """The SQLite storage runs with WAL, a busy timeout and foreign keys."""
    storage = open_storage(tmp_path / "p.sqlite")
    conn = storage._connection()

    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    storage.close()


def test_api_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    """The database file never holds a key's secret part."""
    db = tmp_path / "keys.sqlite"
    with ipm.open_sqlite(db) as app:
        key = app.create_api_key("ops", ["ACME01"])
        secret = key.split("_", 2)[2]  # ipm_<id>_<secret>; the secret may hold "_"

    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in raw


def test_key_creation_checks_its_input() -> None:
    """A key needs an actor and well-formed orgs."""
    with ipm.open_memory() as app, pytest.raises(InvalidRequest):
        app.create_api_key("", ["bad org!"])


def test_unknown_options_are_refused() -> None:
    """A misspelt option is a TypeError, not silently ignored."""
    with pytest.raises(TypeError, match="allow_netwrks"):
        ipm.open_memory(allow_netwrks=["127.0.0.1/32"])


def test_wsgi_adapter_serves_handle() -> None:
    """The WSGI app passes method, path, headers and body through."""
    with ipm.open_memory() as app:
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            seen["status"], seen["headers"] = status, dict(headers)

        body = app.wsgi_app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/stat", "wsgi.input": io.BytesIO()},
            start_response,
        )

    assert seen["status"] == "200 OK"
    assert json.loads(b"".join(body))["data"]["service"] == "ipm"
    assert "x-request-id" in seen["headers"]


def test_asgi_adapter_serves_handle() -> None:
    """The ASGI app answers an HTTP scope through the same handle()."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/stat", "headers": []}
    with ipm.open_memory() as app:
        asyncio.run(app.asgi_app(scope, receive, send))

    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["success"] is True


def test_thread_per_request_does_not_leak_connections(tmp_path: Path) -> None:
    """Regression: a new thread per request once left one SQLite connection each."""
    import threading

    storage = open_storage(tmp_path / "leak.sqlite")

    def request() -> None:
        with storage.unit_of_work(write=False) as uow:
            uow.settings.get("x")

    for _ in range(200):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()

    assert storage.open_connections() <= 2
    storage.close()


def _publish_many(app: ipm.Application, count: int) -> None:
    for n in range(count):
        app.publish(
            "ACME01",
            {
                "event_id": f"ckpt-{n}",
                "service": "sales",
                "action": "order.created",
                "payload": {"n": n, "pad": "x" * 200},
            },
        )


def test_wal_is_checkpointed_off_the_commit_path(tmp_path: Path) -> None:
    """Committed writes reach the database file through the background checkpointer."""
    import time

    db = tmp_path / "ckpt.sqlite"
    with ipm.open_sqlite(db) as app:
        before = db.stat().st_size
        _publish_many(app, 300)
        deadline = time.monotonic() + 10
        while db.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.05)

        grown = db.stat().st_size

        commit_path = app.storage._connection()  # type: ignore[attr-defined]
        safety = commit_path.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    assert grown > before
    assert safety >= 10_000


def test_closing_the_storage_ends_its_checkpointer(tmp_path: Path) -> None:
    """close() stops the checkpoint thread a write started."""
    import threading

    with ipm.open_sqlite(tmp_path / "stop.sqlite") as app:
        _publish_many(app, 3)
        running = [t for t in threading.enumerate() if t.name == "ipm-wal-checkpoint"]

    assert running
    assert not any(thread.is_alive() for thread in running)


def test_writers_of_one_process_queue_on_the_storage_lock(tmp_path: Path) -> None:
    """A write unit of work holds the storage's writer lock; many threads all land."""
    import threading

    storage = open_storage(tmp_path / "writers.sqlite")
    with storage.unit_of_work() as uow:
        held_inside = storage._writers.locked()
        uow.settings.put("probe", b"1")
        uow.commit()
    held_after = storage._writers.locked()

    def write(n: int) -> None:
        for k in range(25):
            with storage.unit_of_work() as uow:
                uow.settings.put(f"t{n}-{k}", str(k).encode())
                uow.commit()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    with storage.unit_of_work(write=False) as uow:
        stored = [uow.settings.get(f"t{n}-{k}") for n in range(8) for k in range(25)]
    storage.close()

    assert (held_inside, held_after) == (True, False)
    assert stored == [str(k).encode() for _ in range(8) for k in range(25)]


class _CountingLock:
    def __init__(self) -> None:
        self.taken = 0

    def acquire(self, timeout: float = -1) -> bool:
        self.taken += 1
        return True

    def release(self) -> None:
        pass


def test_a_long_wal_is_checkpointed_under_the_writer_lock(tmp_path: Path) -> None:
    """Past restart_frames the checkpointer holds the writers off once, so the
    WAL can start over; below it, it never blocks them."""
    from ipm.adapters.sqlite.core import Checkpointer, connect

    db = tmp_path / "restart.sqlite"
    writer = connect(str(db), 5.0, create=True)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x TEXT)")
    lock = _CountingLock()
    checkpointer = Checkpointer(str(db), 5.0, lock, restart_frames=20)
    reader = connect(str(db), 5.0)

    writer.execute("INSERT INTO t VALUES ('a')")
    checkpointer._checkpoint(reader)
    short = lock.taken
    for n in range(40):
        writer.execute("INSERT INTO t VALUES (?)", ("x" * 3000 + str(n),))
    checkpointer._checkpoint(reader)
    writer.close()
    reader.close()

    assert (short, lock.taken) == (0, 1)


def test_a_revoked_key_is_refused_at_once(tmp_path: Path) -> None:
    """Revoking a key in the serving process ends its cached acceptance."""
    with ipm.open_sqlite(tmp_path / "revoke.sqlite") as app:
        key = app.create_api_key("ops", ["ACME01"])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME01"}
        before = app.handle("POST", "/cdc/list", headers, b"{}").status

        revoked = app.revoke_api_key(key.split("_")[1])
        after = app.handle("POST", "/cdc/list", headers, b"{}").status

    assert (before, revoked, after) == (200, True, 401)


def test_an_older_file_gets_sparse_event_indexes_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    """Events stored before 0006 are still found by channel and record after it."""
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, MIGRATIONS[:5], 5)
    conn.execute(
        "INSERT INTO events (sequence, orgcode, event_id, service, action, op, "
        "logical_guid, channel_code, occurred_at, recorded_at, payload, audit, "
        "content_hash) VALUES (1, 'ACME01', 'old', 'pos', 'x.y', 'c', 'order-1', "
        "'web', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '{}', '{}', 'h')"
    )
    conn.close()

    with ipm.open_sqlite(db) as app:
        app.publish("ACME01", {"event_id": "new", "service": "pos", "action": "x.y"})
        key = app.create_api_key("ops", ["ACME01"])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME01"}
        by_channel = app.handle(
            "POST", "/cdc/list", headers, b'{"channel_code": "web"}'
        )
        by_record = app.handle(
            "POST", "/cdc/list", headers, b'{"logical_guid": "order-1"}'
        )
        conn = app.storage._connection()  # type: ignore[attr-defined]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}

    assert [e["event_id"] for e in by_channel.json()["data"]["items"]] == ["old"]
    assert [e["event_id"] for e in by_record.json()["data"]["items"]] == ["old"]
    assert "idx_events_channel_code_present" in indexes
    assert "idx_events_orgcode_channel_code_sequence" not in indexes


def _first_kpi_form(db: sqlite_utils.Database) -> None:
    """0005_kpis as its first version wrote it: a rowid table, no bucket_end."""
    create_kpi_tables(db)
    db.execute("DROP TABLE kpis")
    db.execute(
        "CREATE TABLE kpis (orgcode TEXT, kpi_code TEXT, scope TEXT, bucket TEXT, "
        "bucket_start TEXT, kpi_id TEXT NOT NULL, value BLOB, revision TEXT NOT NULL, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
        "PRIMARY KEY (orgcode, kpi_code, scope, bucket, bucket_start))"
    )
    db.execute(
        "INSERT INTO kpis VALUES ('ACME01', 'NET_SALES', 'store:S1', 'weekly', "
        "'2026-03-02T00:00:00Z', 'kpi_old', 1000.5, '1', "
        "'2026-03-09T01:02:03.000000Z', '2026-03-09T01:02:03.500000Z')"
    )


def test_kpis_of_the_first_form_are_rebuilt_and_stay_readable(
    tmp_path: Path,
) -> None:
    """A file that ran the first 0005_kpis (then replaced in place) gets its
    snapshots clustered with their bucket_end, and reads and records them."""
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, (*MIGRATIONS[:4], ("0005_kpis", _first_kpi_form)), 5)
    conn.close()

    with ipm.open_sqlite(db) as app:
        series = app.kpis.series_wire(
            "ACME01",
            SeriesQuery(
                kpi_code="NET_SALES",
                scope="store:S1",
                bucket="weekly",
                from_utc=datetime(2026, 3, 1, tzinfo=UTC),
                to_utc=datetime(2026, 4, 1, tzinfo=UTC),
            ),
        )
        recorded = app.kpis.record(
            "ACME01",
            RecordKpi(
                kpi_code="NET_SALES",
                scope="store:S1",
                bucket="weekly",
                bucket_start=datetime(2026, 3, 2, tzinfo=UTC),
                value=7,
            ),
            expected_revision="1",
        )
    again = ipm.open_sqlite(db)
    again.close()

    assert series == [
        {
            "kpi_id": "kpi_old",
            "kpi_code": "NET_SALES",
            "scope": "store:S1",
            "bucket": "weekly",
            "bucket_start": "2026-03-02T00:00:00Z",
            "bucket_end": "2026-03-09T00:00:00Z",
            "value": 1000.5,
            "revision": "1",
            "created_at": "2026-03-09T01:02:03Z",
            "updated_at": "2026-03-09T01:02:03.500000Z",
        }
    ]
    assert recorded.value == 7 and recorded.kpi_id == "kpi_old"


def test_the_public_names_are_listed_though_loaded_late() -> None:
    """dir(ipm) shows every name of __all__, before any of them was used."""
    assert set(ipm.__all__) <= set(dir(ipm))


def test_in_memory_ports_import_without_pytest() -> None:
    """Ports, clock, sample events and network stand-ins work without pytest."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', '_pytest'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ipm.testing import MemoryStorage, MemoryBlobStore, MemoryNotifier\n"
        "from ipm.testing import FixedClock, LocalReceiver, ScriptedTransport\n"
        "from ipm.testing import answer, network_error, new_event\n"
        "from ipm.testing import *\n"
        "MemoryStorage().close()\n"
        "new_event(1)\n"
        "FixedClock().advance(1)\n"
        "ScriptedTransport(default=network_error()).ids()\n"
        "LocalReceiver(lambda received: answer(204).status).close()\n"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", ["missing folder", "a folder", "not a database"])
def test_a_database_that_cannot_be_opened_is_named(tmp_path: Path, case: str) -> None:
    """SQLite's refusal keeps its type and says which file it was."""
    path = {
        "missing folder": tmp_path / "nowhere" / "ipm.sqlite",
        "a folder": tmp_path,
        "not a database": tmp_path / "notes.txt",
    }[case]
    if case == "not a database":
        path.write_text("these are not the pages of a database\n" * 200)

    with pytest.raises(sqlite3.Error) as caught:
        ipm.open_sqlite(path)

    assert str(path) in str(caught.value)


def test_ids_increase_and_their_gaps_do_not_count_other_ids() -> None:
    """Ids of one source strictly increase, and the gap between two made in
    one millisecond does not tell how many were made for others in between."""
    ids = SortableIds()
    chooser = random.Random(7)

    made = [ids("req") for _ in range(2000)]
    trials: list[tuple[int, int]] = []
    for _ in range(600):
        others = chooser.randint(0, 20)
        first = int(ids("req").removeprefix("req_"), 16)
        for _ in range(others):
            ids("req")
        last = int(ids("req").removeprefix("req_"), 16)
        if first >> 80 == last >> 80:
            trials.append((others, last - first))

    values = [int(made_id.removeprefix("req_"), 16) for made_id in made]
    assert values == sorted(set(values))
    assert len(trials) > 100, "the machine made too few ids per millisecond"
    # The best a caller could do with steps of one size: divide by the
    # mean step of a gap with nobody in between.
    alone = [gap for others, gap in trials if others == 0] or [1]
    mean = sum(alone) / len(alone)
    right = sum(round(gap / mean) - 1 == others for others, gap in trials)
    assert right / len(trials) < 0.15  # steps of 1..2**32: about 0.4 were right


def test_error_details_are_sorted_by_pointer_whoever_found_them() -> None:
    """Problems come in document order (array items by index), however listed."""
    error = InvalidRequest(
        "bad",
        [
            Problem("/kpi/bucket_start", "a"),
            Problem("/kpi/bucket_end", "b"),
            Problem("/items/10", "c"),
            Problem("/items/2", "d"),
        ],
    )

    assert [p.pointer for p in error.details] == [
        "/items/2",
        "/items/10",
        "/kpi/bucket_end",
        "/kpi/bucket_start",
    ]


def test_export_filter_problems_arrive_sorted(tmp_path: Path) -> None:
    """Filters that do not fit the target are listed by pointer, not body order."""
    with ipm.open_memory() as app:
        key = app.create_api_key("ops@acme.example", ["ACME01"])
        body = {"target": "events", "filters": {"kpi_code": "X", "bucket": "daily"}}
        response = app.handle(
            "POST",
            "/bulk/export/create",
            {"authorization": f"Bearer {key}", "x-orgcode": "ACME01"},
            json.dumps(body).encode(),
        )

    pointers = [p["pointer"] for p in json.loads(response.body)["error"]["details"]]
    assert response.status == 400
    assert pointers == sorted(pointers) and len(pointers) == 2


def test_the_public_submodules_are_reached_from_the_package() -> None:
    """import ipm, then ipm.signing, ipm.schemas or ipm.testing: DESIGN names them."""
    code = (
        "import ipm\n"
        "assert callable(ipm.signing.verify)\n"
        "assert ipm.schemas is not None\n"
        "ipm.testing.FixedClock().advance(1)\n"
        "assert {'signing', 'schemas', 'testing'} <= set(dir(ipm))\n"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr


def _first_form_of_0007(db: Any) -> None:
    """0007 as it first shipped: the column, and no change to the indexes."""
    db.execute("ALTER TABLE webhooks ADD COLUMN held_until INTEGER")


def test_a_file_with_the_first_form_of_0007_gets_the_per_webhook_index(
    tmp_path: Path,
) -> None:
    """0007 was edited after it shipped; 0009 gives the files that recorded
    its first form the schema a new file has."""
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, (*MIGRATIONS[:6], ("0007_webhook_holds", _first_form_of_0007)), 5)
    conn.close()
    fresh = tmp_path / "fresh.sqlite"
    ipm.open_sqlite(fresh).close()

    ipm.open_sqlite(db).close()

    def indexes(path: Path) -> set[str]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'webhook_deliveries'"
            ).fetchall()
        return {name for (name,) in rows}

    assert "webhook_deliveries_webhook_due" in indexes(db)
    assert "webhook_deliveries_due" not in indexes(db)
    assert indexes(db) == indexes(fresh)


def test_tallies_add_every_field() -> None:
    """DeliveryReport and Counters add field by field, each field counted:
    one sum for both, so a field added later is not left out."""
    import attrs

    from ipm.domain.jobs import Counters
    from ipm.usecases.lanes import DeliveryReport

    for kind, one, other in (
        (
            DeliveryReport,
            (1, 2, 3, 4, ("a",), 5, 6, 7),
            (10, 20, 30, 40, ("b",), 50, 60, 70),
        ),
        (Counters, tuple(range(1, 10)), tuple(range(10, 100, 10))),
    ):
        total = kind(*one) + kind(*other)  # type: ignore[operator]
        assert attrs.astuple(total, recurse=False) == tuple(
            a + b for a, b in zip(one, other, strict=True)
        )


class _Key(enum.StrEnum):
    A = "a"


class _Amount(float):
    """A float subclass, as numpy.float64 is: orjson refuses it."""


_HOSTLY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.builds(_Amount, st.floats(allow_nan=False, allow_infinity=False))
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.sampled_from(["a", _Key.A, "b"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_HOSTLY)
def test_a_value_as_stored_is_plain_and_measured_as_written(value: Any) -> None:
    """as_stored gives the plain form ipm stores and the length of its text,
    whichever writer a host's objects needed (orjson, or the standard
    library for a float subclass or a str-subclass key)."""
    plain, size = as_stored(value)

    assert size == len(dumps(plain))
    assert loads(dumps(plain)) == plain
    assert canonical_bytes(plain) == canonical_bytes(loads(dumps(value)))
