"""Peak memory of `fruitlab serve` for one request of 8 PNGs of 6,300 x 6,300 pixels (1-bit, about 5 KB each).

Each file is under the per-image pixel limit (40,000,000), so before the per-request bound the server decoded all
eight, each to a full-size RGB copy, and held them at once. This starts a real server process, warms it up with one
real photo, posts that request and reads the process's peak resident memory (VmHWM, Linux) before and after.

    python benchmarks/serve_memory.py --model models:/qs_load@champion --tracking-uri sqlite:////tmp/load15/mlflow.db \\
        --photo PHOTO.jpg [--max-request-pixels N] [--out result.json]

Run it with PYTHONPATH pointing at another checkout's src/ to measure that code (e.g. the commit before the fix).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import requests

SIDE, FILES = 6300, 8


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of zeros: kilobytes on the wire, width x height pixels once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def peak_mib(pid: int) -> dict[str, float]:
    """Resident memory now and its peak so far (VmRSS, VmHWM) of a Linux process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def measure(model: str, env: dict[str, str], photo: Path, extra: list[str], workdir: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("fruitlab")), "serve", "--model", model, "--port", str(port)]
    cmd += ["--db", f"sqlite:///{workdir / 'predictions.db'}", "--no-access-log", *extra]
    server = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stdout.read()[-3000:]}")
            try:
                if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not get ready in 180 s")
            time.sleep(0.2)
        warm = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
        for _ in range(3):  # first forward passes, allocator warm-up
            assert requests.post(f"{url}/predict", files=warm, timeout=120).status_code == 200
        before = peak_mib(server.pid)
        bomb = png_bomb(SIDE, SIDE)
        files = [("files", (f"big{i}.png", bomb, "image/png")) for i in range(FILES)]
        started = time.perf_counter()
        answer = requests.post(f"{url}/predict", files=files, timeout=300)
        seconds = time.perf_counter() - started
        after = peak_mib(server.pid)
        alive = requests.post(f"{url}/predict", files=warm, timeout=120).status_code
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "request": f"{FILES} x {SIDE}x{SIDE} 1-bit PNG, {len(bomb) * FILES:,} bytes in all",
        "status": answer.status_code,
        "detail": answer.json().get("detail") if answer.status_code != 200 else None,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before["VmRSS"], 1),
        "peak_before_mib": round(before["VmHWM"], 1),
        "peak_after_mib": round(after["VmHWM"], 1),
        "peak_growth_mib": round(after["VmHWM"] - before["VmHWM"], 1),
        "next_request_status": alive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--photo", required=True, type=Path, help="a real photo for the warm-up requests")
    parser.add_argument("--max-request-pixels", type=int, help="passed to serve (default: serve's own)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri}
    extra = ["--max-request-pixels", str(args.max_request_pixels)] if args.max_request_pixels else []
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.model, env, args.photo.expanduser(), extra, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
