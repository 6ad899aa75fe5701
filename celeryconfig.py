"""Every Celery setting InferQ uses, with lowercase names and the reason for each.

Reference: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

import os

from project.redis_url import redis_url as _redis_url

# REDIS_URL, or the embedded Redis that `make run` started.
_REDIS_URL = _redis_url()

# The broker is Redis; CELERY_BROKER_URL overrides it (tests use memory://).
broker_url = os.environ.get("CELERY_BROKER_URL") or _REDIS_URL
# On Redis, kombu's transport with one client per connection pool (project/broker.py) instead of one per operation.
if broker_url.startswith(("redis://", "rediss://")):
    broker_transport = "project.broker:Transport"
# Fail fast when Redis is down so the API can answer 503 instead of hanging (uwsgi.ini lowers it for the web).
broker_connection_timeout = float(os.environ.get("INFERQ_BROKER_CONNECT_TIMEOUT", "2"))
broker_connection_retry_on_startup = True
# A message not acked within this many seconds is redelivered (Redis has no real acks).
# Keep it above the longest task time limit, or slow jobs run twice.
broker_transport_options = {
    "visibility_timeout": int(os.environ.get("INFERQ_VISIBILITY_TIMEOUT", "900")),
    # Socket timeouts on Redis; uwsgi.ini lowers both for the web tier, which only publishes, so a submit
    # meets a frozen or unreachable Redis with a 503 inside 1.5 s (workers keep 5 s: their BRPOP waits 1 s).
    "socket_connect_timeout": float(os.environ.get("INFERQ_BROKER_CONNECT_TIMEOUT", "2")),
    "socket_timeout": float(os.environ.get("INFERQ_BROKER_SOCKET_TIMEOUT", "5")),
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
# Publishing retries briefly, then raises: the caller decides (503 to the client). Each retry can cost a socket
# timeout when Redis is frozen, so uwsgi.ini allows the web tier one.
task_publish_retry_policy = {"max_retries": int(os.environ.get("INFERQ_PUBLISH_RETRIES", "2")), "interval_start": 0,
                             "interval_step": 0.2, "interval_max": 0.5}

# JSON only: a pickle message could run arbitrary code in a worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Job status lives in the Job row, never in Celery's result backend.
task_ignore_result = True
result_backend = None

# Ack after the job ran, and put the message back if the worker process died,
# so a crash loses no job (the Job row's guarded update keeps results written once).
task_acks_late = True
task_reject_on_worker_lost = True
# A running job needs only the database (its lease guards it), so a lost broker connection must not cancel
# it; pinned because Celery 6 changes the default.
worker_cancel_long_running_tasks_on_connection_loss = False
# One message per worker process at a time: a long job never holds others hostage.
worker_prefetch_multiplier = 1

# Per-job limits; a model's manifest can lower them (`timeout_s`).
task_soft_time_limit = int(os.environ.get("INFERQ_TASK_SOFT_TIME_LIMIT", "300"))
task_time_limit = int(os.environ.get("INFERQ_TASK_TIME_LIMIT", "330"))

# Housekeeping goes to the default queue; each model has its own queue `inferq.model.<name>`.
task_default_queue = "inferq"
task_create_missing_queues = True

# Flower needs task events to show jobs as they run.
worker_send_task_events = True
# Flower's task events leave after the task reaches its pool process, batched (workers/consumer.py).
worker_consumer = "workers.consumer:Consumer"
# No `task-sent` event from the web tier: it is a second publish on every submit (measured: a third of the
# submit's broker time), and Flower lists a task from its `task-received` event on, a moment later.
task_send_sent_event = False
worker_hijack_root_logger = False

# Modules a worker imports at start: the task adapters and the torch-side bootstrap.
imports = ("tasks.inference", "tasks.sweeper", "tasks.maintenance", "workers.bootstrap")

# Beat's file-backed scheduler, restarting with a fresh file if a kill left it cut short (tasks/beat.py):
# without beat no sweeper runs, and lost jobs would stay lost.
beat_scheduler = "tasks.beat:RecoveringScheduler"
# Periodic housekeeping, run by `celery -A project beat` on the default queue.
beat_schedule = {
    "sweep-orphaned-jobs": {
        "task": "inferq.sweep",
        "schedule": float(os.environ.get("INFERQ_SWEEP_SECONDS", "10")),
        "options": {"expires": 30},
    },
    # Retention: finished jobs older than INFERQ_RESULT_RETENTION_DAYS go (api/retention.py).
    "purge-expired-jobs": {
        "task": "maintenance.purge_expired",
        "schedule": float(os.environ.get("INFERQ_PURGE_SECONDS", "3600")),
        "options": {"expires": 1800},
    },
}

timezone = "UTC"

# Keep each worker process's database connection between jobs. Without this, Celery's Django fixup closes
# every connection before and after each task, and each job paid for a fresh connection (measured: a fifth
# of a small job's time in the worker). Django's own health checks still replace a broken connection
# (workers/runner.py calls close_old_connections() between jobs). Celery reads this one by its old name only.
CELERY_DB_REUSE_MAX = 1_000_000
