"""uWSGI processes x threads for the web tier: trivial view, status poll and submit rates, side by side.

`python -m bench.web` (or `make bench-web`) prints the table behind uwsgi.ini's default (4 processes x
4 threads). Each layout is started in turn, three times, with no worker running (the API alone, as in
`make bench` part (f)). Compare rates within one run only: on a shared machine they swing by a fifth.
"""

from __future__ import annotations

import os
import statistics
import sys

from bench.__main__ import API_CLIENTS, ROOT, ensure_store, log
from bench.client import Client, api_rates, api_ratios
from bench.stack import stack

CORES = len(os.sched_getaffinity(0))
SECONDS = 4.0
ROUNDS = 3


def layouts() -> list[tuple[int, int]]:
    """(processes, threads), 16 threads in all: the default (two processes per core), then one and four per core."""
    return list(dict.fromkeys((processes, max(1, 16 // processes)) for processes in (2 * CORES, CORES, 4 * CORES)))


def main() -> int:
    from workers.digits import holdout_pngs

    store = ROOT / "var" / "bench" / "store"
    ensure_store(store)
    png = holdout_pngs(1)[0][0]
    found: dict[tuple[int, int], list[tuple[float, float, float, float, float]]] = {}
    for _ in range(ROUNDS):
        for procs, threads in dict.fromkeys(layouts()):
            log(f"web: {procs} process(es) x {threads} thread(s)")
            env = {"INFERQ_WEB_PROCESSES": str(procs), "INFERQ_WEB_THREADS": str(threads)}
            with stack(store, ROOT / "var" / "bench" / "web", models=["digits"], worker=False, extra_env=env) as svc:
                job_id = Client(svc.base, svc.token).submit("digits", png, "image/png")["id"]
                api = api_rates(svc.base, svc.token, png=png, job_id=job_id, seconds=SECONDS, rounds=1,
                                threads=API_CLIENTS)
            ratios = api_ratios(api)  # the trivial view is measured before and after the API, as in (f)
            found.setdefault((procs, threads), []).append((statistics.fmean(api["trivial"]), api["poll"][0],
                                                           api["submit"][0], ratios["poll"][0], ratios["submit"][0]))
    print(f"\nweb processes x threads, the API alone ({CORES} cores, {API_CLIENTS} keep-alive clients, "
          f"median of {ROUNDS} runs)")
    print(f"{'processes':>10}{'threads':>9}{'trivial/s':>11}{'poll/s':>9}{'submit/s':>10}{'poll/triv':>11}"
          f"{'submit/triv':>13}")
    for (procs, threads), runs in found.items():
        trivial, poll, submit, poll_ratio, submit_ratio = (statistics.median(r[i] for r in runs) for i in range(5))
        print(f"{procs:>10}{threads:>9}{trivial:>11.0f}{poll:>9.0f}{submit:>10.0f}{poll_ratio:>11.2f}"
              f"{submit_ratio:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
