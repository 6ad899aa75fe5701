"""Worker start-up, wired to Celery's signals.

Parent (before the pool forks): choose the models this worker serves, add their queues,
cap threads through the environment, import torch and map each model's weights. It runs no
op and never touches CUDA, so forked children are safe and share the mapped pages.

Each child (`worker_process_init`): set torch's thread limits, then build, load and warm
every served model before taking its first job, logging the load time.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals

from project.heap import freeze_loaded
from workers import timelimit
from workers.malloc import tune_malloc

logger = logging.getLogger("inferq.worker")

_served: list[Any] = []  # ModelSpec list, filled in the parent
_threads = {"intra": 1}
_layout = {"auto": False}  # set when neither --concurrency nor worker_concurrency chose the pool size
_worker = {"hostname": ""}
_heartbeat_stop = threading.Event()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(concurrency: int) -> int:
    """INFERQ_THREADS, else the cores divided among the pool's processes (at least 1)."""
    configured = os.environ.get("INFERQ_THREADS")
    if configured:
        return max(1, int(configured))
    return max(1, cores() // max(1, concurrency))


def auto_concurrency(specs: list[Any]) -> int:
    """The pool size when none was given: the cores divided by the most threads a served model wants.

    A model wants its manifest's `threads`, or every core when it names none (INFERQ_THREADS caps both).
    So a worker serving only small models (digits: `threads: 1`) runs one process per core, and one serving
    a large model runs one process with every core as its threads: on both hosts measured (`make
    bench-split`) a large model's batch runs at least as fast on two threads as two batches on one thread
    each (resnet152: level on one, 37% faster on the other), and the process holds one set of activations.
    """
    available = cores()
    configured = os.environ.get("INFERQ_THREADS")
    cap = max(1, int(configured)) if configured else available
    wanted = max((min(spec.threads or available, cap) for spec in specs), default=1)
    return max(1, available // max(1, wanted))


def pool_name(pool_cls: Any) -> str:
    """Celery's pool, by name ("prefork", "solo", "threads", …), whether the worker was given a name or a class."""
    name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "").rsplit(".", 1)[-1]
    return {"processes": "prefork", "thread": "threads"}.get(name, name)


@signals.celeryd_init.connect
def on_celeryd_init(options: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Note whether the pool size was left to InferQ (INFERQ_WORKER_CONCURRENCY unset or 0)."""
    options, conf = options or {}, kwargs.get("conf")
    _layout["auto"] = not (options.get("concurrency") or options.get("autoscale")
                           or getattr(conf, "worker_concurrency", None))


def served_models(store: Any, consumed: list[str]) -> list[Any]:
    """INFERQ_MODELS (comma list), else the models whose queues -Q named, else every model in the store."""
    from workers.store import queue_name

    wanted = [m.strip() for m in os.environ.get("INFERQ_MODELS", "").split(",") if m.strip()]
    if not wanted:
        wanted = [name for name in store.names() if queue_name(name) in consumed]
    if not wanted:
        wanted = store.names()
    return [store.get(name) for name in wanted]


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    from workers.store import get_store

    app = sender.app
    consumed = list(app.amqp.queues.consume_from or {})
    specs = served_models(get_store(), consumed)
    for spec in specs:
        if spec.queue not in consumed:
            app.amqp.queues.select_add(spec.queue)
    _served[:] = specs
    _worker["hostname"] = sender.hostname
    pool = pool_name(sender.pool_cls)
    if pool == "solo":
        sender.concurrency = 1  # one task at a time, in this process: it gets every core's thread
    elif _layout["auto"]:
        sender.concurrency = auto_concurrency(specs)  # the pool is built after this signal
    if pool not in ("prefork", "solo"):
        logger.warning("the %s pool enforces no time limits: a model that hangs holds its job and its slot "
                       "until the worker is restarted (prefork or solo enforce them)", pool)
    timelimit.note_worker_process()

    # Before anything large is allocated; the pool processes inherit it (workers/malloc.py).
    tune_malloc()
    threads = threads_per_process(int(sender.concurrency or 1))
    _threads["intra"] = threads
    # Set before torch is imported so OpenMP and MKL size their pools once, correctly.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)

    import torch  # noqa: F401  (imported in the parent so children share its pages)
    import torchvision  # noqa: F401

    from workers.loading import map_weights

    for spec in specs:
        map_weights(spec)
    # Last before the pool forks: what the parent loaded goes out of the collector's walks, so that a pool
    # process's collections do not write to (and so copy) every page of it (project/heap.py).
    freeze_loaded()
    logger.info("worker serves %s with %d process(es) x %d thread(s)%s",
                ", ".join(f"{s.name}:{s.version}" for s in specs) or "no models",
                sender.concurrency, threads, " (solo pool: the worker's own process)" if pool == "solo" else "")


@signals.worker_process_init.connect
def on_worker_process_init(**kwargs: Any) -> None:
    import torch
    from django.conf import settings

    from workers import idle, lease, registry, runner
    from workers.loading import default_device

    torch.set_num_threads(_threads["intra"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    device = default_device()
    hostname = _worker["hostname"] or os.uname().nodename
    runner.configure(device=device, hostname=hostname, served=[spec.name for spec in _served])
    lease.start(hostname)
    for spec in _served:
        registry.load(spec, device)
    idle.start(settings.INFERQ_IDLE_TRIM_S)  # after the loads: their warm-up batches' memory goes back too


@signals.worker_ready.connect
def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    hostname = sender.hostname
    models = [spec.name for spec in _served]
    interval = max(1.0, settings.INFERQ_HEARTBEAT_TTL / 3)

    def beat() -> None:
        from api.heartbeats import heartbeat_record

        while not _heartbeat_stop.is_set():
            try:
                heartbeat_record(hostname=hostname, models=models)
            except Exception as exc:  # noqa: BLE001 - Redis may blink; keep beating
                logger.warning("heartbeat failed: %s", exc)
            _heartbeat_stop.wait(interval)

    threading.Thread(target=beat, name="inferq-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    _heartbeat_stop.set()
    try:
        from api.heartbeats import heartbeat_clear

        heartbeat_clear(hostname=sender.hostname, models=[spec.name for spec in _served])
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not clear heartbeats: %s", exc)
