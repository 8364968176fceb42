"""Memory amplification: 8 PNGs of 6,300 x 6,300 (each under the per-image pixel limit, 39 KB in all) against a real
`fruitlab serve` process, its peak resident memory (VmHWM) read before and after (benchmarks/serve_memory.py).

Before the per-request bound and the one-at-a-time decode this request raised the server's peak by 1.4 GB
(benchmarks/serve.md). Now the request is refused from the headers alone (413), and with the bound raised so that all
eight are decoded, the peak grows by about 110 MB: one full-size image at a time, each reduced before the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "serve_memory.py"
DECODED_BOUND_MIB = 250  # peak growth allowed when all eight are decoded (measured: 111 MiB with the 224-px model)
REFUSED_BOUND_MIB = 20  # when the request is refused from its headers


def measure(registry, photo, tmp_path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = tmp_path / f"memory{len(extra)}.json"
    cmd = [sys.executable, str(SCRIPT), "--model", registry.model, "--tracking-uri", registry.uri]
    cmd += ["--photo", str(photo), "--out", str(out), *extra]
    done = subprocess.run(cmd, cwd=registry.work, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.smoke
def test_eight_huge_pngs_do_not_take_gigabytes(registry, fruit_photos, tmp_path):
    refused = measure(registry, fruit_photos[0], tmp_path)
    assert refused["status"] == 413, refused
    assert "claim 317,520,000 pixels together, more than the limit of 100,000,000 per request" in refused["detail"]
    assert refused["peak_growth_mib"] < REFUSED_BOUND_MIB and refused["next_request_status"] == 200

    decoded = measure(registry, fruit_photos[0], tmp_path, "--max-request-pixels", "400000000")
    assert decoded["status"] == 200, decoded
    assert decoded["peak_growth_mib"] < DECODED_BOUND_MIB, decoded  # 8 RGB copies alone would be 908 MiB
    assert decoded["next_request_status"] == 200
