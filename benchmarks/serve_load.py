"""Load test for `fruitlab serve`, from a second process: N concurrent clients, real photos, a few invalid files.

    FRUITLAB_ADMIN_TOKEN=... fruitlab serve --model models:/qs_b@champion --db sqlite:////tmp/load/predictions.db \
        --no-access-log &
    FRUITLAB_ADMIN_TOKEN=... python benchmarks/serve_load.py --url http://127.0.0.1:8000 \
        --images ~/.cache/fruitlab/datasets/fruits_fresh_rotten --clients 8 --requests 1000 \
        --invalid-every 50 [--admin-every 10] --db sqlite:////tmp/load/predictions.db --out results.json

Each request posts one image (or --per-request N). Every `--invalid-every`-th request sends a bad file instead, in
turn a truncated JPEG (expects 422), a text file named .jpg (415) and a photo under a 5,000-character name (400).
With `--admin-every N`, every Nth request is an admin-route call instead, in turn GET /predictions/stats with the
admin token ($FRUITLAB_ADMIN_TOKEN or --token; expects 200) and GET /predictions without it (expects 401).
Reports throughput, client-side latency percentiles of the accepted predictions (and of the admin calls), every
status seen, and - with --db - whether the prediction log holds exactly one row per accepted image (by this run's
tag), no more, no fewer, none twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def main() -> None:
    args = parse()
    photos = sorted(p for p in Path(args.images).expanduser().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise SystemExit(f"no images under {args.images}")
    rng = random.Random(0)
    rng.shuffle(photos)
    photos = [(p.name, p.read_bytes()) for p in photos[: args.pool]]
    good = photos[0][1]
    invalid = [
        ("cut.jpg", good[: len(good) // 2], 422),
        ("notes.jpg", b"not an image\n" * 50, 415),
        ("n" * 5000 + ".jpg", good, 400),
    ]
    admin = [("/predictions/stats", {"Authorization": f"Bearer {args.token}"}, 200), ("/predictions", {}, 401)]
    tag = args.tag or f"load-{uuid.uuid4().hex[:8]}"

    ready = requests.get(f"{args.url}/ready", timeout=30).json()
    plan: list[tuple] = []
    for i in range(args.requests):
        if args.admin_every and i % args.admin_every == args.admin_every - 2:
            plan.append(("admin", *admin[(i // args.admin_every) % 2]))
        elif args.invalid_every and i % args.invalid_every == args.invalid_every - 1:
            name, data, status = invalid[(i // args.invalid_every) % len(invalid)]
            plan.append(("predict", [(name, data)], status))
        else:
            files = [photos[(i * args.per_request + k) % len(photos)] for k in range(args.per_request)]
            plan.append(("predict", files, 200))

    local = threading.local()

    def one(item: tuple) -> dict:
        kind, target, extra, expected = item if item[0] == "admin" else (item[0], "/predict", *item[1:])
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        sent = time.perf_counter()
        if kind == "admin":
            answer = session.get(f"{args.url}{target}", params={"tag": tag}, headers=extra, timeout=300)
        else:
            answer = session.post(
                f"{args.url}/predict",
                files=[("files", (name, data, "image/jpeg")) for name, data in extra],
                data={"tag": tag},
                timeout=300,
            )
        seconds = time.perf_counter() - sent
        body = answer.json()
        return {
            "kind": kind,
            "status": answer.status_code,
            "expected": expected,
            "seconds": seconds,
            "images": len(extra) if kind == "predict" else 0,
            "request_id": body.get("request_id"),
            "server_ms": body.get("latency_ms"),
        }

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(one, plan))
    wall = time.perf_counter() - started

    accepted = [r for r in results if r["status"] == 200 and r["kind"] == "predict"]
    admin_calls = [r for r in results if r["kind"] == "admin"]
    latencies = sorted(r["seconds"] * 1000 for r in accepted)
    server = sorted(r["server_ms"] for r in accepted)
    report = {
        "url": args.url,
        "model": ready.get("model"),
        "tag": tag,
        "clients": args.clients,
        "requests": len(results),
        "images_per_request": args.per_request,
        "statuses": dict(sorted(Counter(r["status"] for r in results).items())),
        "admin_calls": dict(sorted(Counter(r["status"] for r in admin_calls).items())),
        "unexpected": sum(r["status"] != r["expected"] for r in results),
        "server_errors_5xx": sum(r["status"] >= 500 for r in results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "accepted_images_per_s": round(sum(r["images"] for r in accepted) / wall, 2),
        "latency_ms": percentiles(latencies),
        "server_latency_ms": percentiles(server),
        "admin_latency_ms": percentiles(sorted(r["seconds"] * 1000 for r in admin_calls)),
        "client_machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}",
    }
    if args.db:
        report["log"] = check_log(args.db, tag, accepted)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def check_log(db: str, tag: str, accepted: list[dict]) -> dict:
    """One row per accepted image of this run, by tag; every answered request id there, no request twice."""
    from fruitlab.serving.log import Filters, PredictionLog

    log = PredictionLog(db)
    try:
        total, rows = log.page(Filters(tag=tag), per_page=10**9)
    finally:
        log.close()
    expected = sum(r["images"] for r in accepted)
    keys = Counter((r["request_id"], r["item"]) for r in rows)
    return {
        "rows": total,
        "expected_rows": expected,
        "rows_equal_accepted_images": total == expected,
        "duplicates": sum(n - 1 for n in keys.values()),
        "answered_requests_missing": len({r["request_id"] for r in accepted} - {r["request_id"] for r in rows}),
        "versions": dict(Counter(r["model_version"] for r in rows)),
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "max": round(values[-1], 1),
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", required=True, help="folder of real images (searched recursively)")
    parser.add_argument("--pool", type=int, default=200, help="distinct images to cycle through")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--per-request", type=int, default=1, help="images per request")
    parser.add_argument("--invalid-every", type=int, default=50, help="every Nth request a bad file (0: none)")
    parser.add_argument("--admin-every", type=int, default=0, help="every Nth request an admin-route call (0: none)")
    parser.add_argument("--token", default=os.environ.get("FRUITLAB_ADMIN_TOKEN", ""), help="the server's admin token")
    parser.add_argument("--db", help="the server's --db, to check the log afterwards")
    parser.add_argument("--tag", help="client tag of this run (default: load-<random>)")
    parser.add_argument("--out", help="also write the report as JSON here")
    return parser.parse_args()


if __name__ == "__main__":
    main()
