"""Prometheus metrics for `/metrics`, gathered at scrape time from the database and Redis.

Web processes and workers are many processes on many machines, so nothing is kept in process
memory. Counters and histograms live in Redis: every job that ends adds itself once (each process
sends its increments in bulk, within a second), so they are cumulative across the fleet and survive
restarts of web and worker processes; they restart from zero only if Redis loses its data, which
Prometheus' `rate()` treats as a counter reset. Gauges (jobs by status, queue depth, workers
online) are read live from the database and the worker heartbeats.

    inferq_jobs{model,status}                     gauge: Job rows now in the database
    inferq_queue_depth{model}                     gauge: jobs queued (waiting for a worker)
    inferq_broker_messages{model}                 gauge: messages in the model's broker queue
    inferq_workers_online{model}                  gauge: workers with a fresh heartbeat
    inferq_jobs_finished_total{model,status}      counter: jobs that ended (cache hits included)
    inferq_cache_hits_total{model}                counter: jobs answered from the result cache
    inferq_job_queue_seconds{model}               histogram: created → started
    inferq_job_inference_seconds{model}           histogram: the forward pass (of the job's batch)
    inferq_job_total_seconds{model}               histogram: created → finished
    inferq_job_batch_size{model}                  histogram: the size of the batch each job ran in
    inferq_redis_up                               gauge: 1 when Redis answered this scrape
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from redis.exceptions import RedisError

from api.models import Job, JobStatus

logger = logging.getLogger(__name__)

MODELS_KEY = "inferq:metrics:models"
FINISHED = ("succeeded", "failed", "canceled")
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...], str]] = {
    # name: (Job field, buckets, help)
    "queue": ("queue_ms", SECONDS_BUCKETS, "Seconds from submission to a worker starting the job."),
    "inference": ("inference_ms", SECONDS_BUCKETS, "Seconds of the forward pass that computed the job."),
    "total": ("total_ms", SECONDS_BUCKETS, "Seconds from submission to the job's end."),
    "batch": ("batch_size", BATCH_BUCKETS, "Number of jobs in the batch each succeeded job ran in."),
}


def model_key(model: str) -> str:
    return f"inferq:metrics:m:{model}"


def _bucket(value: float, buckets: tuple[float, ...]) -> str:
    for bound in buckets:
        if value <= bound:
            return repr(bound)
    return "+Inf"


class _Tally:
    """Increments counted in this process and sent to Redis in bulk, at most FLUSH_SECONDS after they happen.

    Sending each ended job's dozen increments as it ended was a sixth of a small job's time in the
    worker (measured with py-spy on the digits model); a counter that lags a second is still a
    counter. A process that dies loses at most its last second of increments (Prometheus sees a
    slower rate, not a reset).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], float] = {}
        self.models: set[str] = set()
        self.flusher_pid = 0

    def add(self, key: str, field: str, amount: float) -> None:
        self.counts[(key, field)] = self.counts.get((key, field), 0) + amount

    def ensure_flusher(self) -> None:
        """One flusher thread per process, started with its first count (a forked child starts its own)."""
        if self.flusher_pid != os.getpid():
            self.flusher_pid = os.getpid()
            threading.Thread(target=self._flush_forever, name="inferq-metrics", daemon=True).start()

    def after_fork_in_child(self) -> None:
        # The parent's lock may have been held by another thread, and its unsent counts are the parent's to send.
        self.lock = threading.Lock()
        self.counts, self.models = {}, set()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                metrics_flush()
            except Exception as exc:  # noqa: BLE001 - Redis may blink; the counts are kept for the next try
                logger.warning("could not send job metrics: %s", exc)


FLUSH_SECONDS = 1.0
_tally = _Tally()
os.register_at_fork(after_in_child=_tally.after_fork_in_child)


def metrics_record_finished(job: Job) -> None:
    """Count one ended job (counters and histograms); sent to Redis within FLUSH_SECONDS."""
    key = model_key(job.model_name)
    with _tally.lock:
        _tally.ensure_flusher()
        _tally.models.add(job.model_name)
        _tally.add(key, f"jobs:{job.status}", 1)
        if job.cached:
            _tally.add(key, "cache_hits", 1)
            return  # answered without running: its ~0 s timings would only blur the latency histograms
        for name, (field, buckets, _help) in HISTOGRAMS.items():
            value = getattr(job, field, None)
            if value is None:
                continue
            value = float(value) / 1000.0 if field.endswith("_ms") else float(value)
            _tally.add(key, f"{name}:{_bucket(value, buckets)}", 1)
            _tally.add(key, f"{name}:sum", value)
            _tally.add(key, f"{name}:count", 1)


def metrics_tally_clear() -> None:
    """Forget increments not yet sent (tests start each from nothing)."""
    with _tally.lock:
        _tally.counts, _tally.models = {}, set()


def metrics_flush() -> None:
    """Send this process's counted increments to Redis in one pipeline (kept for the next try if it fails)."""
    from api.redis_client import get_redis

    with _tally.lock:
        counts, models = _tally.counts, _tally.models
        _tally.counts, _tally.models = {}, set()
    if not counts and not models:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        if models:
            pipe.sadd(MODELS_KEY, *sorted(models))
        for (key, field), amount in counts.items():
            if field.endswith(":sum"):
                pipe.hincrbyfloat(key, field, amount)
            else:
                pipe.hincrby(key, field, int(amount))
        pipe.execute()
    except BaseException:
        with _tally.lock:
            for (key, field), amount in counts.items():
                _tally.add(key, field, amount)
            _tally.models |= models
        raise


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


def _histogram(name: str, help_text: str, buckets: tuple[float, ...],
               per_model: dict[str, dict[str, str]], prefix: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=["model"])
    for model, fields in sorted(per_model.items()):
        if f"{prefix}:count" not in fields:
            continue
        running = 0.0
        points = []
        for bound in buckets:
            running += float(fields.get(f"{prefix}:{bound!r}", 0))
            points.append((repr(bound), running))
        running += float(fields.get(f"{prefix}:+Inf", 0))
        points.append(("+Inf", running))
        family.add_metric([model], points, float(fields.get(f"{prefix}:sum", 0.0)))
    return family


class InferqCollector(Collector):
    """Reads everything at collect time; holds no state between scrapes."""

    def collect(self) -> Iterator[Metric]:
        from api.heartbeats import workers_online
        from api.redis_client import get_redis
        from workers.store import get_store, queue_name

        try:
            metrics_flush()  # this process's own recent counts, so a scrape sees them
        except RedisError as exc:
            logger.warning("metrics without this process's recent counts: %s", exc)
        models = {spec.name for spec in get_store().latest()}
        rows = Job.objects.values_list("model_name", "status").annotate(n=Count("id")).order_by()
        jobs = GaugeMetricFamily("inferq_jobs", "Job rows in the database by model and status.",
                                 labels=["model", "status"])
        counts: dict[tuple[str, str], int] = {}
        for model, status, n in rows:
            counts[(model, status)] = n
            models.add(model)
        for model in sorted(models):
            for status in JobStatus.values:
                jobs.add_metric([model, status], counts.get((model, status), 0))
        yield jobs
        depth = GaugeMetricFamily("inferq_queue_depth", "Jobs queued for a worker, by model.", labels=["model"])
        for model in sorted(models):
            depth.add_metric([model], counts.get((model, str(JobStatus.QUEUED)), 0))
        yield depth

        redis_up = GaugeMetricFamily("inferq_redis_up", "1 when Redis answered this scrape, else 0.")
        try:
            client = get_redis()
            models |= {m.decode() for m in cast(set[bytes], client.smembers(MODELS_KEY))}
            ordered = sorted(models)
            pipe = client.pipeline(transaction=False)
            for model in ordered:
                pipe.hgetall(model_key(model))
                pipe.llen(queue_name(model))
            replies = pipe.execute()
            per_model = {m: _decode(replies[2 * i]) for i, m in enumerate(ordered)}
            broker = {m: int(replies[2 * i + 1]) for i, m in enumerate(ordered)}
            online = {m: len(workers_online(m, client=client)) for m in ordered}
        except RedisError as exc:
            logger.warning("metrics without Redis: %s", exc)
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        yield from self._redis_families(per_model, broker, online)

    def _redis_families(self, per_model: dict[str, dict[str, str]], broker: dict[str, int],
                        online: dict[str, int]) -> Iterable[Metric]:
        messages = GaugeMetricFamily("inferq_broker_messages", "Messages waiting in the model's broker queue.",
                                     labels=["model"])
        workers = GaugeMetricFamily("inferq_workers_online", "Workers with a fresh heartbeat, by model.",
                                    labels=["model"])
        for model in sorted(broker):
            messages.add_metric([model], broker[model])
            workers.add_metric([model], online[model])
        yield messages
        yield workers
        finished = CounterMetricFamily("inferq_jobs_finished", "Jobs that ended, by model and final status.",
                                       labels=["model", "status"])
        hits = CounterMetricFamily("inferq_cache_hits", "Jobs answered from the result cache.", labels=["model"])
        for model, fields in sorted(per_model.items()):
            for status in FINISHED:
                finished.add_metric([model, status], float(fields.get(f"jobs:{status}", 0)))
            hits.add_metric([model], float(fields.get("cache_hits", 0)))
        yield finished
        yield hits
        for name, (_field, buckets, help_text) in HISTOGRAMS.items():
            metric = "inferq_job_batch_size" if name == "batch" else f"inferq_job_{name}_seconds"
            yield _histogram(metric, help_text, buckets, per_model, name)


def metrics_registry() -> CollectorRegistry:
    """A fresh registry holding only InferQ's collector (no process metrics of one random web process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InferqCollector())
    return registry
