"""The storage contract: events, keys and settings on any adapter.

An adapter proves itself by passing :class:`StorageContract`: subclass it
in a test module and provide a ``storage`` fixture that yields a fresh
:class:`~ipm.ports.Storage`::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            store = open_my_storage(tmp_path)
            yield store
            store.close()

The in-memory and SQLite adapters run the very same suite in ipm's own
tests.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest

from ipm.domain.errors import StorageClosed
from ipm.domain.events import EventFilter, NewEvent
from ipm.ports import ApiKeyRecord, Storage
from ipm.testing.clock import T0, FixedClock
from ipm.testing.events import new_event

__all__ = ["T0", "FixedClock", "StorageContract", "new_event"]


NEAR_ORGS = ("AAA", "ZULU", "acme", "ACME2", "ACM")
"""Org codes next to ``ACME`` that own nothing in the isolation tests: ones
that sort before and after it, differ only in case (org codes are
case-sensitive) or extend or cut it (a ``LIKE`` or prefix match)."""


def _append(storage: Storage, orgcode: str, events: list[NewEvent]) -> list[int]:
    with storage.unit_of_work() as uow:
        sequences = [uow.events.append(orgcode, e, T0).sequence for e in events]
        uow.commit()

    return sequences


def _read(storage: Storage, orgcode: str, where: EventFilter, limit: int = 1000) -> Any:
    with storage.unit_of_work(write=False) as uow:
        return uow.events.list(orgcode, where, limit)


class StorageContract:
    """Behaviour every :class:`~ipm.ports.Storage` adapter must show."""

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("provide a storage fixture")

    def test_appended_event_reads_back_unchanged(self, storage: Storage) -> None:
        """An appended event reads back field for field."""
        original = new_event(1, payload={"big": 2**70 + 1, "text": "café", "n": [1.5]})

        _append(storage, "ACME", [original])
        with storage.unit_of_work(write=False) as uow:
            stored = uow.events.get("ACME", "evt-1")

        assert stored is not None
        assert stored.new == original
        assert stored.sequence == 1

    def test_event_lookups_stay_in_their_org(self, storage: Storage) -> None:
        """An event id is found in the org asked for only: another org's
        event of the same id, or any event at all, is never handed out
        instead (see :data:`NEAR_ORGS` for the orgs tried)."""
        _append(storage, "ACME", [new_event(1), new_event(2, payload={"org": "A"})])
        _append(storage, "OTHER", [new_event(2, payload={"org": "O"})])

        with storage.unit_of_work(write=False) as uow:
            for org in ("OTHER", *NEAR_ORGS):
                assert uow.events.get(org, "evt-1") is None
            for org, own in (("ACME", "A"), ("OTHER", "O")):
                found = uow.events.get(org, "evt-2")
                assert found is not None
                assert (found.orgcode, found.new.payload) == (org, {"org": own})
            for org in NEAR_ORGS:
                assert uow.events.existing_ids(org, ["evt-1", "evt-2"]) == {}
                assert uow.events.list(org, EventFilter(), 10) == []
                assert uow.events.feed(org, EventFilter(), 10) == []
            assert set(uow.events.existing_ids("OTHER", ["evt-1", "evt-2"])) == {
                "evt-2"
            }

    def test_sequences_are_contiguous_across_orgs(self, storage: Storage) -> None:
        """Sequences increase by one per event, whatever the org."""
        first = _append(storage, "ACME", [new_event(1), new_event(2)])
        second = _append(storage, "OTHER", [new_event(3)])

        assert first + second == [1, 2, 3]

    def test_rollback_leaves_nothing(self, storage: Storage) -> None:
        """A unit of work left without commit writes nothing and uses no sequence."""
        with storage.unit_of_work() as uow:
            uow.events.append("ACME", new_event(1), T0)
            uow.settings.put("k", b"v")

        assert _append(storage, "ACME", [new_event(2)]) == [1]
        with storage.unit_of_work(write=False) as uow:
            assert uow.events.get("ACME", "evt-1") is None
            assert uow.settings.get("k") is None

    def test_a_closed_storage_refuses_every_unit_of_work(
        self, storage: Storage
    ) -> None:
        """After close(), reads and writes raise StorageClosed (a 503)."""
        storage.close()

        for write in (True, False):
            with pytest.raises(StorageClosed):
                storage.unit_of_work(write=write)

    def test_failing_batch_writes_nothing(self, storage: Storage) -> None:
        """An exception in the middle of a batch undoes the whole batch."""
        with pytest.raises(RuntimeError), storage.unit_of_work() as uow:
            uow.events.append("ACME", new_event(1), T0)
            uow.events.append("ACME", new_event(2), T0)
            raise RuntimeError("boom")

        assert _read(storage, "ACME", EventFilter()) == []

    def test_append_many_numbers_in_order_after_single_appends(
        self, storage: Storage
    ) -> None:
        """A batch gets the next sequences, contiguous and in its order."""
        _append(storage, "OTHER", [new_event(1)])
        batch = [new_event(n) for n in (5, 3, 4)]

        with storage.unit_of_work() as uow:
            stored = uow.events.append_many("ACME", batch, T0)
            uow.commit()
        after = _append(storage, "ACME", [new_event(9)])

        assert [e.sequence for e in stored] == [2, 3, 4]
        assert [e.new for e in stored] == batch
        assert [e.new for e in _read(storage, "ACME", EventFilter())] == [
            *batch,
            new_event(9),
        ]
        assert after == [5]

    def test_append_many_reads_back_like_append(self, storage: Storage) -> None:
        """A batched event reads back as the same event a single append stores."""
        batch = [new_event(1, payload={"big": 2**70 + 1, "text": "café"})]

        with storage.unit_of_work() as uow:
            (appended,) = uow.events.append_many("ACME", batch, T0)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            stored = uow.events.get("ACME", "evt-1")

        assert stored is not None
        assert stored == appended
        assert stored.content_hash == batch[0].content_hash()

    def test_append_many_of_nothing_changes_nothing(self, storage: Storage) -> None:
        """An empty batch stores nothing and uses no sequence."""
        with storage.unit_of_work() as uow:
            assert uow.events.append_many("ACME", [], T0) == []
            uow.commit()

        assert _append(storage, "ACME", [new_event(1)]) == [1]

    def test_append_many_rolled_back_leaves_nothing(self, storage: Storage) -> None:
        """A batch in a unit of work left without commit is undone whole."""
        with storage.unit_of_work() as uow:
            uow.events.append_many("ACME", [new_event(1), new_event(2)], T0)

        assert _read(storage, "ACME", EventFilter()) == []
        assert _append(storage, "ACME", [new_event(3)]) == [1]

    def test_existing_ids_answers_hashes_per_org(self, storage: Storage) -> None:
        """Only the org's stored ids come back, each with its content hash."""
        _append(storage, "ACME", [new_event(1), new_event(2)])
        _append(storage, "OTHER", [new_event(3)])

        with storage.unit_of_work(write=False) as uow:
            found = uow.events.existing_ids("ACME", {"evt-1", "evt-3", "evt-9"})
            none = uow.events.existing_ids("ACME", set())

        assert found == {"evt-1": new_event(1).content_hash()}
        assert none == {}

    def test_existing_ids_takes_more_ids_than_one_query_binds(
        self, storage: Storage
    ) -> None:
        """A long list of ids is answered whole, however the adapter splits it."""
        _append(storage, "ACME", [new_event(n) for n in range(1, 1201)])
        wanted = [f"evt-{n}" for n in range(0, 2400, 2)]

        with storage.unit_of_work(write=False) as uow:
            found = uow.events.existing_ids("ACME", wanted)

        assert sorted(found) == sorted(f"evt-{n}" for n in range(2, 1201, 2))

    def test_list_filters_and_isolates_orgs(self, storage: Storage) -> None:
        """Each filter narrows the feed, and one org never sees another's events."""
        _append(
            storage,
            "ACME",
            [
                new_event(1),
                new_event(2, service="orders", action="order.placed"),
                new_event(3, channel_code="web"),
                new_event(4, logical_guid="sale-1", action="sale.voided"),
            ],
        )
        _append(storage, "OTHER", [new_event(5)])

        def ids(where: EventFilter) -> list[str]:
            return [e.new.event_id for e in _read(storage, "ACME", where)]

        assert ids(EventFilter()) == ["evt-1", "evt-2", "evt-3", "evt-4"]
        assert ids(EventFilter(service="orders")) == ["evt-2"]
        assert ids(EventFilter(channel_code="web")) == ["evt-3"]
        assert ids(EventFilter(logical_guid="sale-1")) == ["evt-1", "evt-4"]
        assert ids(EventFilter(action_prefix="sale.v")) == ["evt-4"]
        assert ids(EventFilter(after_sequence=2)) == ["evt-3", "evt-4"]
        assert ids(EventFilter(until_sequence=2)) == ["evt-1", "evt-2"]
        assert [e.new.event_id for e in _read(storage, "OTHER", EventFilter())] == [
            "evt-5"
        ]

    def test_list_filters_by_when_events_were_recorded(self, storage: Storage) -> None:
        """The recorded window is half-open, exact to the microsecond."""
        offsets = [0, 0.5, 1, 1.000001, 2]
        with storage.unit_of_work() as uow:
            for n, seconds in enumerate(offsets, start=1):
                uow.events.append("ACME", new_event(n), T0 + timedelta(seconds=seconds))
            uow.commit()

        def ids(start: float | None, end: float | None) -> list[str]:
            where = EventFilter(
                recorded_from=None if start is None else T0 + timedelta(seconds=start),
                recorded_before=None if end is None else T0 + timedelta(seconds=end),
            )
            return [e.new.event_id for e in _read(storage, "ACME", where)]

        assert ids(0.5, None) == ["evt-2", "evt-3", "evt-4", "evt-5"]
        assert ids(None, 1) == ["evt-1", "evt-2"]
        assert ids(1, 1.000001) == ["evt-3"]
        assert ids(1.000001, 2) == ["evt-4"]
        assert ids(2.5, None) == []

    def test_feed_is_the_list_as_wire_json(self, storage: Storage) -> None:
        """feed() (the read behind /cdc/list and exports) gives what list()
        gives, as (sequence, wire JSON) pairs, under every filter and limit."""
        _append(
            storage,
            "ACME",
            [
                new_event(1, payload={"big": 2**70, "text": "café"}),
                new_event(2, service="orders", action="order.placed"),
                new_event(3, channel_code="web"),
            ],
        )
        _append(storage, "OTHER", [new_event(4)])
        _append(storage, "ACME", [new_event(n) for n in range(5, 12)])

        for where, limit in [
            (EventFilter(), 1000),
            (EventFilter(), 3),
            (EventFilter(after_sequence=4), 2),
            (EventFilter(service="orders"), 10),
            (EventFilter(channel_code="web"), 10),
            (EventFilter(until_sequence=6), 10),
        ]:
            listed = _read(storage, "ACME", where, limit)
            with storage.unit_of_work(write=False) as uow:
                fed = uow.events.feed("ACME", where, limit)

            assert [sequence for sequence, _ in fed] == [e.sequence for e in listed]
            assert [json.loads(text) for _, text in fed] == [
                e.to_wire() for e in listed
            ]

    def test_a_bounded_feed_looks_at_no_more_than_it_may(
        self, storage: Storage
    ) -> None:
        """feed_scan() looks at the events the keyed filters find, at most
        ``examine`` of them, returns those the prefix passes, and says where
        it stopped; reads going on from there find every match once."""
        refunds = {4, 9, 10, 17}
        _append(
            storage,
            "ACME",
            [
                new_event(n, action="refund.made" if n in refunds else "sale.created")
                for n in range(1, 21)
            ],
        )
        _append(storage, "OTHER", [new_event(21, action="refund.made")])
        where = EventFilter(action_prefix="refund.")

        with storage.unit_of_work(write=False) as uow:
            first = uow.events.feed_scan("ACME", where, 10, 5)
            full = uow.events.feed_scan("ACME", where, 2, 100)
            keyed = uow.events.feed_scan("ACME", EventFilter(), 10, 3)
            last = uow.events.feed_scan("ACME", EventFilter(after_sequence=18), 10, 5)

        assert ([s for s, _ in first.rows], first.reached) == ([4], 5)
        assert ([s for s, _ in full.rows], full.reached) == ([4, 9], None)
        assert ([s for s, _ in keyed.rows], keyed.reached) == ([1, 2, 3], 3)
        assert ([s for s, _ in last.rows], last.reached) == ([19, 20], None)
        found: list[int] = []
        after, reads = 0, 0
        while True:
            where = EventFilter(action_prefix="refund.", after_sequence=after)
            with storage.unit_of_work(write=False) as uow:
                scan = uow.events.feed_scan("ACME", where, 3, 4)
            reads += 1
            found += [sequence for sequence, _ in scan.rows]
            if scan.reached is not None:
                after = scan.reached
            elif len(scan.rows) == 3:
                after = scan.rows[-1][0]
            else:
                break
        assert found == sorted(refunds)
        assert json.loads(first.rows[0][1])["action"] == "refund.made"
        assert reads == 6  # the last finds the end: 4 events a read

    def test_last_sequence_is_the_newest_of_every_org(self, storage: Storage) -> None:
        with storage.unit_of_work(write=False) as uow:
            assert uow.events.last_sequence() == 0

        _append(storage, "ACME", [new_event(1), new_event(2)])
        _append(storage, "OTHER", [new_event(3)])

        with storage.unit_of_work(write=False) as uow:
            assert uow.events.last_sequence() == 3

    def test_list_honours_limit_in_order(self, storage: Storage) -> None:
        """A limited read returns the first matching events in sequence order."""
        _append(storage, "ACME", [new_event(n) for n in range(1, 11)])

        page = _read(storage, "ACME", EventFilter(after_sequence=3), limit=4)

        assert [e.sequence for e in page] == [4, 5, 6, 7]

    def test_keys_and_settings_round_trip(self, storage: Storage) -> None:
        """API key records and settings read back as stored."""
        record = ApiKeyRecord("k1", "hash", "ops", ("ACME", "B"), T0)

        with storage.unit_of_work() as uow:
            uow.keys.add(record)
            uow.settings.put("token", b"\x00\xff")
            uow.settings.put("token", b"\x01")
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            assert uow.keys.get("k1") == record
            assert uow.keys.get("nope") is None
            assert uow.settings.get("token") == b"\x01"

    def test_keys_are_listed_oldest_first_and_removed(self, storage: Storage) -> None:
        """Keys list oldest first; a removed key is gone, a rolled back removal
        is not."""
        later = ApiKeyRecord("k2", "hash2", "ops", ("ACME",), T0 + timedelta(1))
        first = ApiKeyRecord("k1", "hash1", "ops", ("ACME",), T0)
        with storage.unit_of_work() as uow:
            uow.keys.add(later)
            uow.keys.add(first)
            uow.commit()
        with storage.unit_of_work(write=False) as uow:
            listed = uow.keys.list()

        with storage.unit_of_work() as uow:
            uow.keys.remove("k1")
        with storage.unit_of_work() as uow:
            removed = (uow.keys.remove("k2"), uow.keys.remove("nope"))
            uow.commit()

        with storage.unit_of_work(write=False) as uow:
            remaining = uow.keys.list()
        assert listed == [first, later]
        assert removed == (True, False)
        assert remaining == [first]

    def test_concurrent_batches_never_interleave(self, storage: Storage) -> None:
        """Two threads appending 10,000-event batches get two unbroken ranges."""
        results: dict[str, list[int]] = {}
        barrier = threading.Barrier(2)

        def writer(org: str) -> None:
            batch = [new_event(n, event_id=f"{org}-{n}") for n in range(10_000)]
            barrier.wait()
            results[org] = _append(storage, org, batch)

        threads = [threading.Thread(target=writer, args=(org,)) for org in "AB"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for sequences in results.values():
            assert sequences == list(range(sequences[0], sequences[0] + 10_000))
        assert sorted(results["A"] + results["B"]) == list(range(1, 20_001))

    def test_reader_sees_every_event_once_while_writers_append(
        self, storage: Storage
    ) -> None:
        """A reader paging during four writers misses and repeats nothing."""
        per_writer, writers = 300, 4
        done = threading.Event()

        def writer(w: int) -> None:
            for n in range(per_writer):
                _append(storage, "ACME", [new_event(n, event_id=f"w{w}-{n}")])

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        seen: list[int] = []
        after = 0
        while True:
            finished = done.is_set()
            page = _read(storage, "ACME", EventFilter(after_sequence=after), limit=7)
            seen += [e.sequence for e in page]
            after = seen[-1] if seen else 0
            if (not page and finished) or len(seen) > per_writer * writers:
                break  # (more than were written: repeats, so fail, not spin)
            if all(not t.is_alive() for t in threads):
                done.set()

        assert seen == list(range(1, per_writer * writers + 1))
