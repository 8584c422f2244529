"""``ipm keys``, ``ipm deliver`` and ``ipm openapi``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ipm
from ipm.cli._common import existing_db, shown
from ipm.domain.errors import StorageBusy, StorageUnavailable
from ipm.usecases.delivery import DeliveryReport
from ipm.usecases.telling import Sometimes, held_back

log = logging.getLogger(__name__)


def keys_create(args: argparse.Namespace) -> int:
    new = not Path(args.db).exists()
    with ipm.open_sqlite(args.db) as app:
        key = app.create_api_key(args.actor, args.org)
        try:
            sys.stdout.write(key + "\n")
            sys.stdout.flush()
        except OSError:
            # Nobody saw the key: it must not stay usable, unknown to all.
            app.revoke_api_key(key)
            raise
    if new:
        # A key made in a new file from the wrong folder would be refused
        # by a server reading another: say where it went (stdout keeps the
        # key alone).
        sys.stderr.write(
            f"created a new database {shown(str(Path(args.db).resolve()))} "
            "for the key; a server must use the same file (--db)\n"
        )

    return 0


def keys_list(args: argparse.Namespace) -> int:
    with ipm.open_sqlite(existing_db(args.db)) as app:
        keys = app.list_api_keys()
    for key in keys:
        sys.stdout.write(json.dumps(key, sort_keys=True) + "\n")
    if not keys:
        # Nothing on stdout (a script reads no lines); a person is told why.
        sys.stderr.write(
            f"no API keys in {shown(args.db)} (ipm keys create makes one)\n"
        )

    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    # "ipm_<id>" as the help shows it, or a whole key pasted by mistake,
    # names its id; a secret is never echoed.
    parts = args.key_id.split("_")
    key_id = parts[1] if parts[0] == "ipm" and len(parts) >= 2 else args.key_id
    with ipm.open_sqlite(existing_db(args.db)) as app:
        removed = app.revoke_api_key(key_id)
    if not removed:
        sys.stderr.write(
            "ipm keys revoke: no key with that id (revoked already, or never "
            "made; ipm keys list shows the keys)\n"
        )
        return 1

    sys.stderr.write(
        f"revoked {key_id}; a running server stops accepting it within 30 s\n"
    )
    return 0


def deliver(args: argparse.Namespace) -> int:
    """The webhook dispatcher loop; with --once, drain what is due and exit."""
    app = ipm.open_sqlite(existing_db(args.db), allow_networks=args.allow_network or ())
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            # A second signal: the operator will not wait for the record.
            log.warning(
                "second signal %s: exiting now; deliveries sent but not yet "
                "recorded go out again once their leases end",
                signum,
            )
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.info("stopping on signal %s once the sends under way end", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("delivering webhooks from %s", args.db)
    loop = _Loop(app, args, stop)
    # The loop has a thread of its own and this one only waits: Python runs
    # signal handlers in the main thread between its own steps, so a main
    # thread inside SQLite (waiting out another writer's lock) would hear a
    # signal only when SQLite returned, up to a busy timeout later.
    worker = threading.Thread(target=loop.run, name="ipm-deliver-loop", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if loop.error is not None:
        raise loop.error
    return loop.status


class _Loop:
    """``ipm deliver``'s loop: ``deliver_pending`` until stopped (or, with
    --once, until nothing is due); ``status`` is the exit status."""

    def __init__(
        self, app: ipm.Application, args: argparse.Namespace, stop: threading.Event
    ) -> None:
        self.app, self.args, self.stop = app, args, stop
        self.status = 0
        self.error: BaseException | None = None
        # The storage fault a stop met, when the loop ended on one.
        self.fault_at_stop: str | None = None

    def run(self) -> None:
        teller = _Teller()
        short_rounds = untried = 0
        try:
            short_rounds, untried = self._rounds(teller)
        except BaseException as error:
            self.error = error
        finally:
            try:
                self.app.close()
            except BaseException as error:
                # Raised in the main thread, as if the loop had raised it.
                self.error = self.error or error
            # What was recorded is told however the loop ended.
            _tell(teller.total + DeliveryReport(untried_here=untried), "in all: ")
        if self.args.once and short_rounds >= ONCE_SHORT_ROUNDS:
            log.error(
                "deliveries are still due that this machine could not send "
                "(see the warnings above): they wait, untried, for the next run"
            )
            self.status = 1
        if self.fault_at_stop is not None:
            log.error(
                "stopped while the database could not take writes (%s): any "
                "deliveries sent but not recorded go out again once their "
                "leases end",
                self.fault_at_stop,
            )
            self.status = 1

    def _rounds(self, teller: _Teller) -> tuple[int, int]:
        """Call deliver_pending until done: (rounds in a row that sent
        nothing for want of something here, deliveries the last left)."""
        args, stop = self.args, self.stop
        blocked = Sometimes(60.0)
        short_rounds = 0
        report = DeliveryReport()
        while not stop.is_set():
            try:
                # The call runs while deliveries are due and obeys a stop
                # signal within the sends under way, not after a backlog is
                # drained (a supervisor's grace period would end in SIGKILL,
                # and the deliveries it leased would wait out their lease).
                # What is recorded is told once a second at most; a --once
                # run's last spell only in its closing total, which would
                # otherwise repeat it line for line in a short run.
                report = self.app.deliver_pending(stop=stop, progress=teller.hear)
                if not args.once:
                    teller.tell()
            except (StorageBusy, StorageUnavailable) as exc:
                if args.once:
                    raise
                teller.tell()
                if stop.is_set():
                    # No again: the exit status says how the run ended.
                    self.fault_at_stop = exc.message.split(";")[0]
                    break
                # Another writer held the database too long, or its disk is
                # full: a server keeps serving, so the dispatcher keeps going
                # too, and records once the database takes writes again
                # (said unless it is stopping, when there is no again).
                held = None if stop.is_set() else blocked.due()
                if held is not None:
                    log.warning(
                        "cannot record deliveries just now (%s); trying again "
                        "every %s s%s",
                        exc.message.split(";")[0],
                        args.interval,
                        held_back(held),
                    )
                stop.wait(args.interval)
                continue
            sent_nothing = report.attempted == 0
            short = sent_nothing and report.untried_here > 0
            short_rounds = short_rounds + 1 if short else 0
            if sent_nothing:
                if args.once and (not short or short_rounds >= ONCE_SHORT_ROUNDS):
                    # Nothing due; or due deliveries this machine cannot
                    # send, and --once must not say it drained them.
                    break
                stop.wait(args.interval)

        return short_rounds, report.untried_here


ONCE_SHORT_ROUNDS = 5
"""Rounds in a row that ``--once`` tries when this machine cannot send
what is due (out of descriptors, say) before it gives up with status 1."""


class _Teller:
    """Sums the recorded groups' reports and logs them once a second at
    most: with failing endpoints a group is often one attempt."""

    def __init__(self) -> None:
        self._heard = DeliveryReport()
        self._told_at = time.monotonic()
        # Everything recorded, a call that raised afterwards included.
        self.total = DeliveryReport()

    def hear(self, report: DeliveryReport) -> None:
        self._heard += report
        self.total += report
        if time.monotonic() - self._told_at >= 1.0:
            self.tell()

    def tell(self) -> None:
        """Log what was heard since the last line, if anything."""
        if self._heard.attempted:
            _tell(self._heard)
        self._heard = DeliveryReport()
        self._told_at = time.monotonic()


def _tell(report: DeliveryReport, lead: str = "") -> None:
    """One log line of what a spell of sending (or the whole run) did."""
    held = f", {report.held} held (endpoint not answering)" if report.held else ""
    disabled = len(report.disabled)
    gone = f", {disabled} webhook(s) disabled" if disabled else ""
    untried = report.untried_here
    here = f", {untried} left untried (this machine could not send)" if untried else ""
    put_back = report.released
    back = f", {put_back} put back untried, still due" if put_back else ""
    log.info(
        "%s%d attempt(s): %d delivered, %d to retry, %d failed for good%s%s%s%s",
        lead,
        report.attempted,
        report.delivered,
        report.retrying,
        report.failed,
        held,
        gone,
        here,
        back,
    )


def openapi(args: argparse.Namespace) -> int:
    with ipm.open_memory() as app:
        document = app.openapi()
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")

    return 0
