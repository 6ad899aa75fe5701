"""`manage.py submit_bulk` against the real service: in-process and over HTTP, interrupted and resumed, and accuracy."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.integration.processes import ROOT, Service

pytestmark = pytest.mark.integration

GOOD = 200
BROKEN = {"empty.jpg": "empty_input", "truncated.jpg": "invalid_image", "text.jpg": "invalid_image",
          "notes.txt": "unsupported_media_type", "half.png": "invalid_image"}


def small_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_folder(root: Path, seed: int) -> Path:
    """GOOD distinct 64x48 JPEGs (seeded: each test its own, so no result-cache hits) and the BROKEN files."""
    for i in range(GOOD):
        sub = root / f"day{i % 4}" / ("raw" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:03d}.jpg").write_bytes(small_jpeg(seed * 1000 + i))
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(small_jpeg(seed)[:300])
    (root / "text.jpg").write_text("definitely not a JPEG")
    (root / "notes.txt").write_text("not an image either")
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(png, format="PNG")
    (root / "half.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    return root


def bulk(service: Service, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "submit_bulk", *args], cwd=ROOT, env=service.env,
                          capture_output=True, text=True, timeout=timeout)


def read_rows(out: Path) -> list[dict[str, Any]]:
    if out.suffix == ".csv":
        with open(out, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in out.read_text().splitlines()]


def batch_jobs(service: Service, batch_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    url: str | None = f"{service.base}/v1/jobs?batch={batch_id}&limit=500"
    while url:
        page = requests.get(url, headers=service.headers, timeout=30).json()
        jobs += page["results"]
        url = page["next"]
    return jobs


def check_outcome(service: Service, out: Path) -> str:
    """200 succeeded lines with top-k and timings, 5 clear errors, one batch holding exactly the 200 jobs."""
    rows = read_rows(out)
    assert len(rows) == GOOD + len(BROKEN) == len({r["path"] for r in rows})
    ok = [r for r in rows if r["status"] == "succeeded"]
    failed = {Path(r["path"]).name: r for r in rows if r["status"] == "failed"}
    assert len(ok) == GOOD, Counter(r["status"] for r in rows)
    assert {name: r["error_code"] for name, r in failed.items()} == BROKEN
    assert all(r["error_message"] for r in failed.values())
    top = [r["label_1"] for r in ok] if out.suffix == ".csv" else [r["predictions"][0]["label"] for r in ok]
    assert set(top) <= {str(d) for d in range(10)} and all(float(r["total_ms"]) > 0 for r in ok)
    (batch_id,) = {r["batch_id"] for r in rows}
    jobs = batch_jobs(service, batch_id)
    assert {j["id"] for j in jobs} == {r["job_id"] for r in ok}
    assert len({j["input"]["sha256"] for j in jobs}) == GOOD  # no input submitted twice
    counts = requests.get(f"{service.base}/v1/batches/{batch_id}", headers=service.headers, timeout=10).json()
    assert counts["total"] == GOOD and counts["counts"]["succeeded"] == GOOD
    return batch_id


def test_in_process_folder_gives_200_results_and_5_errors(service: Service, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", seed=1)
    out = tmp_path / "results.csv"
    done = bulk(service, str(folder), "--model", "digits", "--out", str(out), "--user", "integration",
                "--progress-every", "0.2")
    assert done.returncode == 1, done.stderr
    check_outcome(service, out)
    assert "succeeded    200" in done.stdout and "failed       5" in done.stdout and "p95" in done.stdout
    assert "5 of 205 inputs failed" in done.stderr
    assert re.search(r"^submitted \d+/205, done \d+, failed \d+, [\d.]+/s, ETA \S+$", done.stderr, re.M), done.stderr


def test_remote_folder_gives_200_results_and_5_errors(service: Service, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", seed=2)
    out = tmp_path / "results.jsonl"
    done = bulk(service, str(folder), "--model", "digits", "--out", str(out), "--api", service.base,
                "--token", service.token, "--concurrency", "8")
    assert done.returncode == 1, done.stderr
    check_outcome(service, out)
    assert "succeeded    200" in done.stdout


def test_an_interrupted_remote_run_resumed_submits_no_input_twice(service: Service, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", seed=3)
    out = tmp_path / "results.csv"
    args = [str(folder), "--model", "digits", "--out", str(out), "--api", service.base, "--token", service.token]
    proc = subprocess.Popen([sys.executable, "manage.py", "submit_bulk", *args, "--concurrency", "1"], cwd=ROOT,
                            env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 12):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and f"--out {out}" in stderr
    first = read_rows(out)
    assert 10 <= len(first) < GOOD + len(BROKEN), "the interruption came too late to leave inputs unsubmitted"
    resumed = bulk(service, *args, "--resume")
    assert resumed.returncode == 1, resumed.stderr
    assert f"({len(first)} submitted by an earlier run)" in resumed.stdout
    already = sum(1 for r in first if r["job_id"])
    assert already >= 1 and f"submitted    {GOOD - already}\n" in resumed.stdout
    check_outcome(service, out)


def test_digits_holdout_through_submit_bulk_reaches_the_manifests_accuracy(service: Service, tmp_path: Path) -> None:
    from workers.digits import holdout_pngs

    folder = tmp_path / "digits"
    folder.mkdir()
    pairs = holdout_pngs()
    for i, (png, label) in enumerate(pairs):
        (folder / f"{i:04d}-label{label}.png").write_bytes(png)
    out = tmp_path / "digits.jsonl"
    done = bulk(service, str(folder / "*.png"), "--model", "digits", "--out", str(out), "--user", "integration")
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert len(rows) == len(pairs) >= 100 and {r["status"] for r in rows} == {"succeeded"}
    correct = sum(r["predictions"][0]["label"] == os.path.basename(r["path"]).split("label")[1][0] for r in rows)
    manifest = json.loads((service.store / "digits" / "1" / "manifest.json").read_text())
    # The manifest's figure is rounded to 4 places.
    assert correct / len(rows) >= manifest["accuracy"] - 0.5e-4, (correct / len(rows), manifest["accuracy"])
