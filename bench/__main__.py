"""`make bench` / `make bench-quick`: every figure measured side by side in one run, printed as ratios.

(a) the limit: decode + preprocess + forward in one in-process loop, best batch size, all cores (as one
    forward pass per batch on every thread, or as one single-thread pass per core side by side over its
    shares, the two ways the worker may run a batch: whichever is faster here; a single-thread layout with
    its 1x1 convolutions where PyTorch puts them or on oneDNN, the faster, as the worker chooses at load),
    measured before, between and after five turns of (b) (the host drifts over minutes; each (b) is compared with
    the mean of the limit on either side of it, and the median of the five ratios is reported; the first afresh,
    not the best of the tries that chose the layout, which is an optimistic reading of it)
    (and, for reference, one single-thread loop per core side by side: the layout for small models)
(b) InferQ end to end over HTTP on the same images and model file, default configuration
    (the pool sized from the served models: resnet50 -> 1 process x all cores, its batches run as one pass
    or as side-by-side streams as the worker measured at load): every image submitted into one batch over
    12 connections, then one wait for the batch to end and its results read a page at a time, the
    throughput with the queue never empty; target (b)/(a) >= 0.95; the CPU each role of the stack spent per
    image, beside the loop's. Also collected job by job (each connection waiting for each of its jobs), and
    as a closed loop: 12 jobs in flight (and 8), each client submitting its
    next image once it has the last one's result, where the batches are as full as the clients are quick
(c) one process per job (fork, load the model file, one thread);          target InferQ/(c) >= 3.5x
(d) dynamic batching on / off
(e) one client on the digits model, submit with `Prefer: wait`: overhead over the in-process call made after
    the idle time the worker's pool process has between the client's jobs (back to back shown too)
(f) the API alone: submit and status-poll req/s, each / a trivial Django view on the same uWSGI, the three
    taken in turn five times (the median of the rounds' ratios)
(g) memory: PSS of the worker pool serving the big model, 2 processes / 1: the peak of the tree's total, read
    from /proc/*/smaps_rollup every 0.25 s while the pool serves (a second pass of the load, so that the reads
    do not slow (c)'s throughput) (and, for reference, once it has been idle
    long enough to give back the memory its batches freed)

The in-process figures ((a), (c) and (e)'s reference call) come from one lab process (bench/lab.py)
that imports torch while the stack starts; it and the stack take turns, so each measurement runs
alone. A new worker configuration starts while the previous one stops, and is measured once that
one has exited. The bench's own process never imports torch.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench import memory
from bench.client import Client, api_rates, api_ratios, run_batch, run_bulk, run_jobs
from bench.images import photos
from bench.lab import Lab
from bench.layout import layout_of
from bench.stack import cpu_seconds, settle, stack, start_worker, wait_online
from bench.turn import breakdown
from tests.integration.processes import Service

ROOT = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))
# The benchmark's client connections, within the web tier's 12 wait slots (a client beyond them polls every
# 0.2 s). (b) submits every image over them first; its closed loop keeps this many jobs in flight, a batch and
# a half (resnet50's batch_size is 8), so that the next batch fills while one runs. With exactly one batch in
# flight every batch ends with the queue empty and the next starts part-filled: (b) is printed at that load too.
CLIENTS = 12
# `throughput`'s concurrency for "submit every image, then collect every result": into one batch, then one wait
# for the batch and a page of its results (BULK: each connection sends its share in bulk submits of up to
# BULK_INPUTS images; ONE_BY_ONE: a request per image), or each connection waiting for each of its jobs (PER_JOB).
BULK = "bulk"
ONE_BY_ONE = "bulk, a request per image"
PER_JOB = "bulk, job by job"
BULK_INPUTS = 16
ONE_BATCH = 8
# The worker's default: INFERQ_WORKER_CONCURRENCY, else 0 (the worker sizes its pool from the served models).
DEFAULT_CONCURRENCY = int(os.environ.get("INFERQ_WORKER_CONCURRENCY") or 0)
# Keep-alive clients for the API-only rates: one per web thread (4 processes x 4), so every process gets its share.
API_CLIENTS = 16
# (f) takes the three rates in turn this many times (2 s each) and reports the median of each round's ratios:
# one round's ratio moved by a fifth from the next on this host.
API_ROUNDS = 5
# (g)'s worker configurations trim their heap after this many idle seconds (the default is 10; --quick: 0.5), so
# that the memory an idle pool holds is read a few seconds after serving.
IDLE_TRIM_S = 2.0
# (g) reads the pool's PSS this often while it serves.
PSS_INTERVAL_S = 0.25
# (b) and the limit (a) take turns this many times.
# (The limit moved by up to 19% within one run on the third host: a median of three turns still swung.)
B_ROUNDS = 5


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def missing_models(root: Path, *architectures: str) -> list[str]:
    from workers.store import ModelStore

    store = ModelStore(root)
    return [arch for arch in dict.fromkeys((*architectures, "digits")) if not store.versions(arch)]


def ensure_store(root: Path, *architectures: str, lab: Lab | None = None) -> None:
    """Export (random weights) what the store lacks of these and `digits`, through `lab` or a lab of its own."""
    missing = missing_models(root, *architectures)
    if not missing:
        return
    log(f"exporting {', '.join(missing)} (random weights) into {root}")
    if lab is not None:
        lab("export", architectures=missing)
        return
    with Lab(root) as own:
        own("export", architectures=missing)


def restart_worker(svc: Service, *, models: list[str], concurrency: int, threads: int | None = None,
                   **env: str) -> None:
    """Start a worker of this configuration while the running one stops (nothing is measured meanwhile);
    return once the new one serves `models` and the old one has exited."""
    old = svc.procs.pop("worker", None)
    if old is not None and old.poll() is None:
        os.killpg(old.pid, signal.SIGTERM)
    svc.env.update({"INFERQ_MODELS": ",".join(models), "INFERQ_BATCHING": "1", **env})
    svc.env.pop("INFERQ_THREADS", None)
    if threads:
        svc.env["INFERQ_THREADS"] = str(threads)
    start_worker(svc, concurrency)
    wait_online(svc, models)
    if old is not None:
        try:
            old.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(old.pid, signal.SIGKILL)
            old.wait()
    settle(svc)


def throughput(svc: Service, model: str, images: list[bytes], concurrency: int | str,
               turns: list[dict[str, float]] | None = None) -> float:
    """images/s with `concurrency` jobs in flight (a closed loop), or, with BULK or PER_JOB, every image
    submitted over CLIENTS connections and then every result collected. With BULK, `turns` (if given) gets where
    the timed run's time went (`bench.turn.breakdown`)."""
    items = [(img, "image/jpeg") for img in images]
    marks: dict[str, float] = {}
    if concurrency == BULK:
        run, n = partial(run_batch, marks=marks, per_request=BULK_INPUTS), CLIENTS
    elif concurrency == ONE_BY_ONE:
        run, n = run_batch, CLIENTS
    elif concurrency == PER_JOB:
        run, n = run_bulk, CLIENTS
    else:
        run, n = run_jobs, int(concurrency)
    run(svc.base, svc.token, model, items[: max(2, n)], n)  # warm-up
    elapsed, jobs = run(svc.base, svc.token, model, items, n)
    failed = [j for j in jobs if j["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0]}")
    if turns is not None and marks:
        turns.append(breakdown(jobs, marks))
    return len(items) / elapsed


LATENCY_WARMUP = 10


def latency(svc: Service, count: int) -> list[float]:
    """`count` submit-and-wait round trips of one client on the digits model (after LATENCY_WARMUP unmeasured)."""
    from workers.digits import holdout_pngs

    pngs = [png for png, _ in holdout_pngs()]
    client = Client(svc.base, svc.token)
    times = []
    for i in range(count + LATENCY_WARMUP):
        started = time.perf_counter()
        job = client.submit("digits", pngs[i % len(pngs)], "image/png", wait=10)
        job = client.result(job)
        elapsed = (time.perf_counter() - started) * 1000.0
        assert job["status"] == "succeeded", job
        if i >= LATENCY_WARMUP:
            times.append(elapsed)
    return times


def model_idle_ms(latencies_ms: list[float], pool_cpu_s: float) -> float:
    """How long the pool process sits idle between one client's jobs: each request's time (the median) less the
    CPU the pool spent on it (`pool_cpu_s` over the requests, warm-up included). (e)'s in-process reference call
    idles this long before each call, since on these VMs a call after a longer idle runs slower (the digits call:
    0.39 ms back to back, 0.53 after 1.5 ms, 1.06 after 3.5 ms, 1.34 after 5 ms, in a slow spell)."""
    per_request_ms = pool_cpu_s * 1000.0 / (len(latencies_ms) + LATENCY_WARMUP)
    return max(0.0, statistics.median(latencies_ms) - per_request_ms)


def worker_layout(log_text: str, model: str) -> tuple[str, str]:
    """What the worker chose for `model` when it loaded it, from the worker's log (the stack logs inferq.worker at
    INFO; the latest load counts): a short form, and the measurements it logged behind the choice."""
    found: dict[str, re.Match[str]] = {}
    for key, pattern in (("streams", r"runs batches as (\d+) stream\(s\)"),
                         ("conv1x1", r"runs the 1x1 convolutions of its single-thread passes on "
                                     r"(oneDNN|PyTorch's choice)")):
        matches = list(re.finditer(rf"model {re.escape(model)}:\S+ ({pattern}[^\n]*)", log_text))
        if matches:
            found[key] = matches[-1]
    if not found:
        return "not measured", "no layout logged (set by INFERQ_STREAMS or the manifest, or not worth measuring)"
    parts = []
    if "streams" in found:
        count = int(found["streams"].group(2))
        parts.append(f"{count} streams" if count > 1 else "one pass")
    if "conv1x1" in found:
        parts.append(f"1x1 on {found['conv1x1'].group(2)}")
    return ", ".join(parts), "; ".join(match.group(1) for match in found.values())


def cpu_groups(svc: Service) -> dict[str, list[int]]:
    """The stack's processes by role, the worker's main process apart from its pool."""
    worker = svc.procs["worker"].pid
    groups = {"pool": [pid for pid in memory.tree(worker) if pid != worker], "worker main": [worker]}
    groups.update({name: memory.tree(proc.pid) for name, proc in svc.procs.items() if name != "worker"})
    return groups


def cpu_by_role(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds each role of the stack has spent so far."""
    return {name: cpu_seconds(pids) for name, pids in groups.items()}


def cpu_ms_per_image(groups: dict[str, list[int]], before: dict[str, float], images: int) -> dict[str, float]:
    """CPU ms per image each role spent since `before` (cpu_by_role's) over `images` images."""
    return {name: (spent - before[name]) * 1000 / images for name, spent in cpu_by_role(groups).items()}


def pss(svc: Service) -> float:
    return memory.tree_pss_mib(svc.procs["worker"].pid)[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny inputs, every part, under a minute")
    args = parser.parse_args()
    quick = args.quick
    main_model, big_model = ("mobilenet_v3_small", "resnet18") if quick else ("resnet50", "resnet152")
    n_main, n_big, n_base = (8, 4, 2) if quick else (160, 24, 8)
    api_seconds = 1.0 if quick else 2.0 * API_ROUNDS
    idle_trim_s = 0.5 if quick else IDLE_TRIM_S
    size = (160, 120) if quick else (640, 480)
    store = ROOT / "var" / "bench" / "store"
    images = photos(n_main, size)
    wh = list(size)
    rows: list[tuple[str, str, str, str]] = []
    results: dict[str, Any] = {}
    # The lab imports torch while the stack starts. Every measurement then runs alone: the stack
    # sits idle through the lab's, the lab through the stack's.
    with Lab(store) as lab:
        ensure_store(store, main_model, big_model, lab=lab)
        with stack(store, ROOT / "var" / "bench" / "run", models=[main_model, "digits"],
                   concurrency=DEFAULT_CONCURRENCY) as svc:
            concurrency = DEFAULT_CONCURRENCY
            # The two measurements that fork come first (see bench/lab.py).
            log(f"(c) one process per job, {big_model}")
            base_rate = lab("baseline", model=big_model, images=n_base, size=wh)["images_per_s"]
            log(f"(a) in-process limit, {main_model}")
            per_core = lab("per_core", model=main_model, images=n_main // 2, batch=4 if not quick else 2, size=wh)
            per_core_rate = per_core["images_per_s"]
            limit = lab("limit", model=main_model, images=n_main, batch_sizes=[1, 4] if quick else [1, 4, 8],
                        threads=CORES, streams=[1, CORES], size=wh)
            best = max(limit["rates"], key=lambda key: limit["rates"][key])
            best_bs, best_streams = layout_of(best)
            # The best single pass too (the loop in its plainest form), measured beside (b) as well.
            one_pass = max((key for key in limit["rates"] if layout_of(key)[1] == 1),
                           key=lambda key: limit["rates"][key])
            digits_inproc = lab("limit", model="digits", images=64, batch_sizes=[1], threads=CORES, size=wh,
                                latency=200)["latency_ms"]["p50"]

            log(f"(b) InferQ end to end, {main_model}")
            groups = cpu_groups(svc)
            before = cpu_by_role(groups)
            # (b) and (a) take turns, (a) at its best batch size with InferQ idle: the host drifts over minutes
            # (the limit moved by 6-11% within one run here), so each (b) is compared with the mean of the
            # limit measured on either side of it, and the rounds' median is reported.
            results["b_rounds"], results["a_rounds"], results["one_pass_rounds"] = [], [], []
            results["b_turns"] = []

            def limit_turn() -> None:
                """The limit at the chosen layout, and the best single pass, each measured once more."""
                results["a_rounds"].append(lab("limit", model=main_model, images=n_main, batch_sizes=[best_bs],
                                               threads=CORES, streams=[best_streams], size=wh,
                                               onednn_1x1=limit["onednn_1x1"])["rates"][best])
                results["one_pass_rounds"].append(
                    results["a_rounds"][-1] if one_pass == best else
                    lab("limit", model=main_model, images=n_main, batch_sizes=[layout_of(one_pass)[0]],
                        threads=CORES, size=wh, onednn_1x1=limit["onednn_1x1"])["rates"][one_pass])

            # The limit before the first turn is measured afresh, not taken from the tries that chose the layout:
            # the fastest of several noisy measurements is an optimistic one of its layout (the winner's curse;
            # in one run the chosen layout read 20.30 img/s in the tries and 17.68-18.76 in the five turns).
            limit_turn()
            for turn in range(1 if quick else B_ROUNDS):
                results["b_rounds"].append(throughput(svc, main_model, images, BULK, turns=results["b_turns"]))
                if turn == 0:
                    # The warm-up's images count too: CPU per image is over every image (b) sent.
                    sent = len(images) + min(len(images), CLIENTS)
                    results["b_cpu"] = cpu_ms_per_image(groups, before, sent)
                limit_turn()
            results["b_layout"] = worker_layout(svc.log("worker").read_text(errors="replace"), main_model)
            # The closed loops and the job-by-job collection once each (a turn each took a minute on a slow host).
            results["b_loop"] = throughput(svc, main_model, images, CLIENTS)
            results["b_one_batch"] = throughput(svc, main_model, images, ONE_BATCH)
            # (b) as it was measured until 2026-12-07: the same batch, each image in a request of its own.
            before = cpu_by_role(groups)
            results["b_one_by_one"] = throughput(svc, main_model, images, ONE_BY_ONE)
            results["b_one_by_one_cpu"] = cpu_ms_per_image(groups, before, sent)
            # The same load collected the way it was until 2026-12-06: each connection long-polls each of its jobs.
            before = cpu_by_role(groups)
            results["b_per_job"] = throughput(svc, main_model, images, PER_JOB)
            results["b_per_job_cpu"] = cpu_ms_per_image(groups, before, sent)

            log("(e) latency, digits, one client")
            groups = cpu_groups(svc)
            before = cpu_by_role(groups)
            results["e"] = latency(svc, 40 if quick else 300)
            results["e_idle"] = model_idle_ms(results["e"], cpu_by_role(groups)["pool"] - before["pool"])
            # The same call in-process, each after the idle time the worker's pool process has between the jobs.
            results["e_paced"] = lab("limit", model="digits", images=64, batch_sizes=[1], threads=CORES, size=wh,
                                     latency=50 if quick else 200,
                                     gap_ms=round(results["e_idle"], 3))["latency_ms"]["p50"]
            # Done with the lab: from here on only InferQ's processes map torch's libraries and the weights
            # ((g) reads PSS, which splits shared pages among every process that maps them).
            lab.close()

            log("(d) batching off")
            restart_worker(svc, models=[main_model], concurrency=concurrency, INFERQ_BATCHING="0")
            results["d_off"] = throughput(svc, main_model, images, BULK)

            log(f"(c)/(g) InferQ on {big_model}, 1 and 2 worker processes")
            big_images = photos(n_big, size)
            for procs in (1, 2):
                restart_worker(svc, models=[big_model], concurrency=procs, INFERQ_IDLE_TRIM_S=str(idle_trim_s))
                results[f"big_{procs}"] = throughput(svc, big_model, big_images, 8)
                # PSS read while the pool serves the same load again (its batches' activations included), and once
                # it has been idle long enough to give back what its batches freed (workers/idle.py). Apart from
                # the timed pass: a read of smaps_rollup walks the process's page tables under its memory-map lock,
                # and reading the pool ten times a second slowed resnet152 by 26-29% (four times: 9-11%).
                with memory.sampling(svc.procs["worker"].pid, interval=PSS_INTERVAL_S) as serving:
                    throughput(svc, big_model, big_images, 8)
                time.sleep(2 * idle_trim_s + 0.5)
                results[f"pss_{procs}"] = serving.peak, pss(svc)

            log("(f) the API alone (no worker)")
            svc.stop("worker")
            from workers.digits import holdout_pngs

            png = holdout_pngs(1)[0][0]
            job_id = Client(svc.base, svc.token).submit("digits", png, "image/png")["id"]
            api = api_rates(svc.base, svc.token, png=png, job_id=job_id, seconds=api_seconds, rounds=API_ROUNDS,
                            threads=API_CLIENTS)

    big_best = max(results["big_1"], results["big_2"])
    a_rounds, b_rounds = results["a_rounds"], results["b_rounds"]

    def around(limits: list[float], turn: int) -> float:
        """The mean of the limit measured on either side of (b)'s `turn`."""
        return (limits[turn] + limits[turn + 1]) / 2

    def turn_ratios(limits: list[float]) -> list[float]:
        """Each turn of (b) over the limit around it."""
        return [b / around(limits, i) for i, b in enumerate(b_rounds)]

    b_ratios = turn_ratios(a_rounds)
    # The turn whose ratio is the median, taken apart (bench/turn.py), beside the time (a)'s pace would have taken.
    mid = sorted(range(len(b_ratios)), key=lambda i: b_ratios[i])[len(b_ratios) // 2]
    mid_turn, mid_pace = results["b_turns"][mid], len(images) / around(a_rounds, mid)
    b_one_pass = statistics.median(turn_ratios(results["one_pass_rounds"]))
    b_rate, b_ratio = statistics.median(b_rounds), statistics.median(b_ratios)
    limit_mean = statistics.fmean(a_rounds)
    overhead = [t - results["e_paced"] for t in results["e"]]
    p50, p99 = statistics.median(overhead), percentile(overhead, 99)
    strict = [t - digits_inproc for t in results["e"]]
    trivial, submit, poll = (statistics.median(api[kind]) for kind in ("trivial", "submit", "poll"))
    ratios = api_ratios(api)
    submit_ratios, poll_ratios = ratios["submit"], ratios["poll"]
    submit_errors = sum(api["submit_errors"])
    rows += [
        ("(a) limit: in-process loop", f"{main_model}, batch {best_bs}, {limit['threads']} threads"
         + (f" as {best_streams} streams" if best_streams > 1 else " in one pass")
         + (", 1x1 convolutions on oneDNN" if limit["onednn_1x1"].get(best) else ""),
         " / ".join(f"{a:.2f}" for a in a_rounds) + " img/s", f"before, between and after (b); mean {limit_mean:.2f}"),
        ("    every layout tried first", "batch size[:streams]",
         ", ".join(f"{key}{'+oneDNN 1x1' if limit['onednn_1x1'].get(key) else ''} {rate:.2f}"
                   for key, rate in limit["rates"].items()), ""),
        ("    side by side, 1 thread each", f"{main_model}, batch {4 if not quick else 2}, {CORES} loops"
         + (", 1x1 convolutions on oneDNN" if per_core["onednn_1x1"] else ""),
         f"{per_core_rate:.2f} img/s", ""),
        ("(b) InferQ end to end (HTTP)",
         f"{main_model}, default config, all submitted (bulk submits of {BULK_INPUTS}), then collected",
         f"{b_rate:.2f} img/s", f"(b)/(a) = {b_ratio:.3f}  [target >= 0.95]; rounds "
                                + ", ".join(f"{r:.3f}" for r in b_ratios)
                                + f"; / the best single-pass loop (batch {layout_of(one_pass)[0]}) = {b_one_pass:.3f}"
                                + f"; / side by side = {b_rate / per_core_rate:.3f}"),
        ("    the median turn, from its jobs", "claims and endings as the API reports them; (a)'s pace",
         f"{mid_turn['turn']:.2f} s; {mid_pace:.2f} s",
         f"submits answered {mid_turn['submits']:.2f} s; first claim +{mid_turn['first_claim'] * 1000:.0f} ms; "
         f"first claim to last ending {mid_turn['run']:.2f} s, no job running in {mid_turn['between'] * 1000:.0f} ms "
         f"of it; results read {mid_turn['after_last'] * 1000:.0f} ms after the last ending; "
         f"mean batch {mid_turn['batch']:.1f}"),
        ("    the worker's layout", "chosen at load, from its log", results["b_layout"][0], results["b_layout"][1]),
        ("    CPU per image during (b)", ", ".join(results["b_cpu"]) + "; (a)",
         " / ".join(f"{ms:.1f}" for ms in results["b_cpu"].values())
         + f"; {limit['cpu_ms_per_item'][best]:.1f} ms", "the pool beyond (a), and the rest: the queue's cost"),
        ("    a request per image", f"{main_model}, as (b) but each image submitted alone",
         f"{results['b_one_by_one']:.2f} img/s", f"/ (a) = {results['b_one_by_one'] / limit_mean:.3f}; CPU per image "
         + " / ".join(f"{ms:.1f}" for ms in results["b_one_by_one_cpu"].values()) + " ms"),
        ("    collected job by job", f"{main_model}, each connection waits for each of its jobs",
         f"{results['b_per_job']:.2f} img/s", f"/ (a) = {results['b_per_job'] / limit_mean:.3f}; CPU per image "
         + " / ".join(f"{ms:.1f}" for ms in results["b_per_job_cpu"].values()) + " ms"),
        ("    closed loop", f"{main_model}, {CLIENTS} jobs in flight",
         f"{results['b_loop']:.2f} img/s", f"/ (a) = {results['b_loop'] / limit_mean:.3f}"),
        ("    one batch in flight", f"{main_model}, {ONE_BATCH} jobs in flight",
         f"{results['b_one_batch']:.2f} img/s", f"/ (a) = {results['b_one_batch'] / limit_mean:.3f}"),
        ("(c) one process per job", f"{big_model}, {CORES} at once, 1 thread",
         f"{base_rate:.2f} img/s",
         f"InferQ/(c) = {big_best / base_rate:.2f}x  [target >= 3.5x; 3.75x on 8 vCPU]"),
        ("    InferQ on the big model", f"{big_model}, 1 proc / 2 procs",
         f"{results['big_1']:.2f} / {results['big_2']:.2f} img/s", ""),
        ("(d) batching on / off", f"{main_model}", f"{b_rate:.2f} / {results['d_off']:.2f} img/s",
         f"on/off = {b_rate / results['d_off']:.2f}x"),
        ("(e) latency overhead, 1 client",
         f"digits, in-process {results['e_paced']:.2f} ms after the pool's idle {results['e_idle']:.2f} ms",
         f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "[targets p50 <= 5 ms, p99 <= 20 ms]"),
        ("    over a back-to-back loop", f"digits, in-process {digits_inproc:.2f} ms",
         f"p50 {statistics.median(strict):.2f} ms, p99 {percentile(strict, 99):.2f} ms", ""),
        ("(f) submit vs trivial view", f"uWSGI as configured, {API_ROUNDS} rounds",
         f"{submit:.0f} / {trivial:.0f} req/s", f"{statistics.median(submit_ratios):.2f}  [target >= 0.25]; rounds "
                                                f"{', '.join(f'{r:.2f}' for r in submit_ratios)}"
                                                + (f" ({submit_errors} errors)" if submit_errors else "")),
        ("    status poll vs trivial view", "", f"{poll:.0f} / {trivial:.0f} req/s",
         f"{statistics.median(poll_ratios):.2f}  [target >= 0.5]; rounds "
         f"{', '.join(f'{r:.2f}' for r in poll_ratios)}"),
        ("(g) worker pool PSS, 2 procs / 1", f"{big_model}, the peak while serving",
         f"{results['pss_2'][0]:.0f} / {results['pss_1'][0]:.0f} MiB",
         f"{results['pss_2'][0] / results['pss_1'][0]:.3f}  [target <= 1.25]"),
        ("    idle after serving", f"{2 * idle_trim_s + 0.5:g} s after, idle trim after {idle_trim_s:g} s",
         f"{results['pss_2'][1]:.0f} / {results['pss_1'][1]:.0f} MiB",
         f"{results['pss_2'][1] / results['pss_1'][1]:.3f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\nInferQ benchmark ({'quick' if quick else 'full'}; {CORES} cores; ratios are measured side by side)")
    if quick:
        print("(quick: tiny inputs and models, so per-job overhead dominates; the targets are for `make bench`)")
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
