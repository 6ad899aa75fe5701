"""Enqueue rate of `submit_bulk --no-wait` (in-process and remote) beside plain API submits, on a running InferQ.

Starts nothing: point it at a service (`make run`, or any deployment) and run it with the same
environment as that service (REDIS_URL, DATABASE_URL, MODEL_STORE, INFERQ_VAR_DIR), since the
in-process mode writes to its database and broker directly:

    python -m bench.bulk_submit_rate --api http://127.0.0.1:8000 --token "$(make -s token)" --count 300

Each method gets its own freshly generated photos, so the result cache answers none of them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.client import Client
from bench.images import photo

ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int, seed: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(photo(seed + i, size))
        paths.append(path)
    return paths


def drain(api: str, token: str, model: str, timeout: float = 600) -> None:
    """Wait until the model's queue is empty, so each method is timed with the workers equally idle."""
    client = Client(api, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = client.request("GET", f"/v1/models/{model}")
        if status == 200 and json.loads(body).get("queued") == 0:
            return
        time.sleep(0.5)
    raise SystemExit(f"{model}'s queue did not drain in {timeout:.0f} s")


def api_rate(api: str, token: str, model: str, paths: list[Path], concurrency: int) -> float:
    """Plain `POST /v1/models/{model}/jobs`, raw bytes already in memory, `concurrency` keep-alive clients."""
    bodies = [p.read_bytes() for p in paths]
    local = threading.local()

    def post(i: int) -> int:
        if not hasattr(local, "client"):
            local.client = Client(api, token)  # one keep-alive connection per thread
        status, _ = local.client.request("POST", f"/v1/models/{model}/jobs", bodies[i],
                                         {"Content-Type": "image/jpeg"})
        return status

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(post, range(len(bodies)), chunksize=1))
    elapsed = time.perf_counter() - started
    refused = [s for s in statuses if s not in (200, 202)]
    if refused:
        raise SystemExit(f"plain API submits refused: {sorted(set(refused))}")
    return len(bodies) / elapsed


def bulk_rate(folder: Path, model: str, out: Path, *extra: str) -> tuple[float, float]:
    """(inputs/s enqueued as the command reports it, inputs/s over the whole process including start-up)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "manage.py", "submit_bulk", str(folder), "--model", model, "--out",
                           str(out), "--no-wait", *extra], cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"submit_bulk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    match = re.search(r"enqueued at ([\d.]+) inputs/s", done.stdout)
    if not match:
        raise SystemExit(f"no enqueue rate in:\n{done.stdout}")
    count = int(re.search(r"submitted\s+(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    return float(match.group(1)), count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", default="640x480", help="photo size, WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=3, help="each method this many times, interleaved; medians")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    seed = int(time.time() * 1000) % 10**9  # fresh bytes on every run: no result-cache hits
    rates: dict[str, list[float]] = {"api": [], "remote": [], "local": [], "remote_total": [], "local_total": []}
    with tempfile.TemporaryDirectory(prefix="inferq-bulk-bench-") as tmp:
        for r in range(args.rounds):
            root = Path(tmp) / str(r)
            sets = {name: make_photos(root / name, args.count, seed + (3 * r + k) * args.count, size)  # type: ignore[arg-type]
                    for k, name in enumerate(("api", "remote", "local"))}
            drain(args.api, args.token, args.model)
            rates["api"].append(api_rate(args.api, args.token, args.model, sets["api"], args.concurrency))
            drain(args.api, args.token, args.model)
            remote, remote_total = bulk_rate(root / "remote", args.model, root / "remote.csv", "--api", args.api,
                                             "--token", args.token, "--concurrency", str(args.concurrency))
            drain(args.api, args.token, args.model)
            local, local_total = bulk_rate(root / "local", args.model, root / "local.csv",
                                           "--concurrency", str(args.concurrency))
            for key, value in (("remote", remote), ("remote_total", remote_total), ("local", local),
                               ("local_total", local_total)):
                rates[key].append(value)
            print(f"round {r + 1}: API {rates['api'][-1]:.1f}, remote {remote:.1f}, local {local:.1f} inputs/s",
                  file=sys.stderr, flush=True)
    med = {key: statistics.median(values) for key, values in rates.items()}
    print(f"{args.count} photos {args.size} to {args.model}, concurrency {args.concurrency}, "
          f"median of {args.rounds} rounds")
    print(f"plain API submits             {med['api']:8.1f} inputs/s")
    for mode in ("remote", "local"):
        print(f"submit_bulk --no-wait {mode:<7} {med[mode]:8.1f} inputs/s  ({med[mode] / med['api']:.2f}x API; "
              f"{med[mode + '_total']:.1f}/s counting process start-up)")


if __name__ == "__main__":
    main()
