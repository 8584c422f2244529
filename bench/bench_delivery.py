"""Webhook dispatcher benchmark: signed deliveries to a receiver on 127.0.0.1.

A receiver runs in its own process (so it does not share the dispatcher's
interpreter lock): a standard-library HTTP/1.1 server with keep-alive
that answers 204. ipm, on a fresh SQLite file, queues one delivery per
published event; then ``deliver_pending()`` is timed until the queue is
empty, every attempt recorded (the count is checked). The baseline, in
the same run, posts the same bodies to the same receiver over one
keep-alive ``http.client`` connection with no signing and no database:
the cost of the HTTP exchange alone.

Run: ``python bench/bench_delivery.py`` (``--quick`` for fewer events).
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import _options  # the sibling module: scripts run with bench/ on sys.path

import ipm
from ipm.domain.webhooks import SubscriptionFilter
from ipm.usecases.webhooks import CreateWebhook

ORG = "BENCH"
CHUNK = 500

_RECEIVER = textwrap.dedent(
    """
    import http.server, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


def _start_receiver() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _event(n: int) -> dict[str, Any]:
    return {
        "service": "pos",
        "action": "sale.created",
        "logical_guid": f"sale-{n}",
        "payload": {"sale_id": n, "total_minor": 100 * n, "currency": "EUR"},
    }


def _dispatch(folder: Path, port: int, total: int, workers: int) -> dict[str, Any]:
    app = ipm.open_sqlite(
        folder / f"bench-{workers}.sqlite",
        allow_networks=["127.0.0.0/8"],
        delivery_workers=workers,
    )
    url = f"http://127.0.0.1:{port}/hook"
    app.webhooks.create(ORG, CreateWebhook(url, (SubscriptionFilter("pos"),)))

    started = time.perf_counter()
    for first in range(0, total, CHUNK):
        app.publish_many(ORG, [_event(n) for n in range(first, first + CHUNK)])
    queue_s = time.perf_counter() - started

    started = time.perf_counter()
    report = app.deliver_pending()
    send_s = time.perf_counter() - started

    conn = app.storage._connection()  # type: ignore[attr-defined]
    (attempts,) = conn.execute("SELECT count(*) FROM webhook_attempts").fetchone()
    app.close()
    assert report.delivered == total == attempts, (report, attempts)

    return {
        "workers": workers,
        "queue_per_s": round(total / queue_s),
        "deliveries_per_s": round(total / send_s),
    }


def _baseline(port: int, total: int) -> float:
    """Sequential POSTs of the same bodies on one kept-alive connection."""
    body = b'{"type":"pos.sale.created","data":{"payload":{"sale_id":1}}}' * 4
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    for _ in range(total):
        connection.request(
            "POST", "/hook", body=body, headers={"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 204
    elapsed = time.perf_counter() - started
    connection.close()

    return total / elapsed


def run(quick: bool = False) -> dict[str, Any]:
    total = 2_000 if quick else 10_000
    receiver, port = _start_receiver()
    try:
        raw = _baseline(port, total)
        with tempfile.TemporaryDirectory() as folder:
            runs = [_dispatch(Path(folder), port, total, w) for w in (1, 4, 8)]
    finally:
        receiver.terminate()
        receiver.wait()

    best = max(runs, key=lambda r: r["deliveries_per_s"])
    return {
        "deliveries": total,
        "raw_http_per_s": round(raw),
        "runs": runs,
        "best_per_s": best["deliveries_per_s"],
        "best_over_raw": round(best["deliveries_per_s"] / raw, 2),
    }


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints this module's description."""
    parser = _options.parser(__doc__, "2,000 events instead of 10,000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    results = run(quick=options(argv).quick)
    print(f"webhook dispatcher: {results['deliveries']:,} signed deliveries")
    print(f"baseline raw keep-alive POSTs: {results['raw_http_per_s']:,}/s")
    print(f"{'workers':>7} {'queued/s':>10} {'delivered/s':>12} {'vs raw':>7}")
    for r in results["runs"]:
        ratio = r["deliveries_per_s"] / results["raw_http_per_s"]
        print(
            f"{r['workers']:>7} {r['queue_per_s']:>10,} "
            f"{r['deliveries_per_s']:>12,} {ratio:>6.2f}x"
        )
    target = "met" if results["best_per_s"] >= 1000 else "NOT met"
    print(f"best: {results['best_per_s']:,}/s (target >= 1,000/s: {target})")


if __name__ == "__main__":
    main()
