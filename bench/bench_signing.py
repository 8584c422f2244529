"""Sign+verify throughput of ipm.signing against the Standard Webhooks reference.

Run it as ``python bench/bench_signing.py`` (``--quick`` for a short run). Each
contender signs and then verifies the same 1 KiB body with the same secret, the
same number of times, in the same process. The rounds are interleaved, the
order of the contenders turns by one place each round, and the best round of
each counts (the median round is printed beside it), so a burst of load on the
machine hurts neither side more than the other; time is process CPU time, so
other processes on a shared machine count less. The reference's ``Webhook`` is
built once and reused, as a receiver with one endpoint would do. Besides the
two contenders it times the reference building its ``Webhook`` per message (as
a receiver that looks the secret up per request does), two bare
``hmac.digest`` calls (the hashing any sign+verify pair must do) and ipm's own
two HMACs without any parsing or checks.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

try:
    from ipm import signing
except ImportError:  # run from a checkout without installing ipm
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ipm import signing

import _options  # the sibling module: scripts run with bench/ on sys.path
from standardwebhooks.webhooks import Webhook

MSG_ID = "msg_2bV1cXg0eZk7QmTfH3aLw9sRpY4"
BODY_SIZE = 1024
TARGET_RATIO = 2.5


def _body() -> bytes:
    """A realistic ~1 KB JSON event, exactly BODY_SIZE bytes long."""
    event = {
        "type": "order.updated",
        "orgcode": "ACME",
        "data": {"order_id": "ord_123", "lines": [], "note": ""},
    }
    text = json.dumps(event)
    filler = BODY_SIZE - len(text)
    event["data"]["note"] = "x" * filler  # type: ignore[index]

    return json.dumps(event).encode()


def _contenders(body: bytes) -> dict[str, Callable[[], object]]:
    moment = datetime.now(tz=UTC)
    seconds = int(moment.timestamp())
    stamp = str(seconds)
    secret = signing.generate_secret(32)
    reference = Webhook(secret)
    key = base64.b64decode(secret.removeprefix("whsec_"))

    def ipm() -> None:
        signature = signing.sign(secret, MSG_ID, seconds, body)
        headers = {
            "webhook-id": MSG_ID,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        signing.verify(secret, headers, body)

    def standardwebhooks() -> None:
        signature = reference.sign(MSG_ID, moment, body)
        headers = {
            "webhook-id": MSG_ID,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        reference.verify(body, headers, json_parse=False)

    def standardwebhooks_per_message() -> None:
        # A receiver that looks the endpoint's secret up for each request.
        signature = Webhook(secret).sign(MSG_ID, moment, body)
        headers = {
            "webhook-id": MSG_ID,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        Webhook(secret).verify(body, headers, json_parse=False)

    prefix = f"{MSG_ID}.{stamp}.".encode()
    content = prefix + body

    def stdlib_hmac_floor() -> None:
        hmac.digest(key, content, "sha256")
        hmac.digest(key, content, "sha256")

    keyed = signing._load_secret(secret)
    assert isinstance(keyed, signing._HmacKey)

    def ipm_hashing_only() -> None:
        # The two HMACs as ipm computes them, without any parsing or checks.
        keyed.entry(prefix, body)
        keyed.entry(prefix, body)

    return {
        "ipm": ipm,
        "standardwebhooks": standardwebhooks,
        "standardwebhooks_per_message": standardwebhooks_per_message,
        "stdlib_hmac_floor": stdlib_hmac_floor,
        "ipm_hashing_only": ipm_hashing_only,
    }


def _time_round(work: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        work()

    return time.process_time() - started


def run(quick: bool = False) -> dict[str, object]:
    """Measure and return ops/s per contender and the ratios against the reference."""
    count, rounds = (2_000, 5) if quick else (20_000, 15)
    body = _body()
    contenders = _contenders(body)
    for work in contenders.values():
        work()  # warm caches and check that every contender succeeds

    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        # Turning the order keeps any drift within a round off one contender.
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_round(contenders[name], count))

    ops = {name: count / min(spent) for name, spent in times.items()}
    median_ops = {
        name: count / statistics.median(spent) for name, spent in times.items()
    }
    reference = ops["standardwebhooks"]
    ratio = ops["ipm"] / reference
    median_ratio = median_ops["ipm"] / median_ops["standardwebhooks"]

    return {
        "operation": "sign + verify, HMAC-SHA256 (v1)",
        "body_bytes": len(body),
        "count_per_round": count,
        "rounds": rounds,
        "ops_per_second": {name: round(value) for name, value in ops.items()},
        "microseconds_per_op": {
            name: round(1e6 / value, 2) for name, value in ops.items()
        },
        "ratio_to_standardwebhooks": {
            name: round(value / reference, 2) for name, value in ops.items()
        },
        "median_microseconds_per_op": {
            name: round(1e6 / value, 2) for name, value in median_ops.items()
        },
        "median_ratio": round(median_ratio, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--help`` prints this module's description."""
    parser = _options.parser(__doc__, "a short run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run(quick=options(argv).quick)

    print(f"sign + verify of a {result['body_bytes']}-byte body: best (median) of")
    print(f"{result['rounds']} rounds of {result['count_per_round']} operations")
    ops = result["ops_per_second"]
    micros = result["microseconds_per_op"]
    medians = result["median_microseconds_per_op"]
    ratios = result["ratio_to_standardwebhooks"]
    assert isinstance(ops, dict) and isinstance(micros, dict)
    assert isinstance(medians, dict) and isinstance(ratios, dict)
    for name in ops:
        print(
            f"  {name:28s} {ops[name]:>9,} ops/s  {micros[name]:6.2f}"
            f" ({medians[name]:6.2f}) us/op  x{ratios[name]:.2f} vs standardwebhooks"
        )
    verdict = "meets" if result["meets_target"] else "misses"
    print(
        f"ipm {verdict} the x{result['target_ratio']} target"
        f" (x{result['median_ratio']:.2f} on median rounds)"
    )


if __name__ == "__main__":
    main()
