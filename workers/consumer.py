"""The worker's Celery consumer: task events for Flower go out shortly after a task starts, not before; and
the messages of jobs that already ran in another job's batch end here, without a trip to the pool (BatchMates).

Celery's consumer buffers task events (received, started, succeeded) and, stock, flushes them
at the top of the very next event-loop turn. That turn comes before the loop writes the task
to its pool process, so every job waited for a PUBLISH round trip to Redis (and its
serialisation) on its way to the model: measured with `make bench`'s part (e), task events
cost about 1.8 ms of a 10 ms submit-and-wait. Here the buffer is flushed on a timer instead,
EVENT_FLUSH_S after the first buffered event, so the task reaches its pool process first and
a job's events (and its neighbours') share one PUBLISH. Flower sees them 50 ms later, which
nobody watching a dashboard can tell; a full buffer (Celery's 24 events) still flushes at once.
"""

from __future__ import annotations

import ast
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import task_ready

from tasks.inference import TASK_NAME

logger = logging.getLogger("inferq.worker")

EVENT_FLUSH_S = 0.05
# Batch mates remembered until their messages come; ids whose message went to another worker age out.
BATCH_MATES_KEPT = 4096


class BatchMates:
    """The jobs that ran as another job's batch mates, until their own messages reach this worker.

    Each queued job has a message; a batch runs up to `batch_size` jobs under its first job's message, and
    the others' messages used to go to the pool process one by one to find their job taken: a hand-off each
    way and a write statement (`job_start`'s guarded UPDATE) each, 7 per batch of 8. The pool process now names
    the batch mates in its result (Flower shows it), and their messages are acknowledged here, in the
    consumer, with the task events Flower expects ("ran in the batch of job …"). Only what the pool process
    reported is skipped, after the batch has ended every one of them: any other message runs as before (a
    second pool process may still get a mate's message while its batch runs, and finds the job taken).

    On Redis most mates' messages never come: the pool process takes them off the queue once the batch has
    ended them (`dequeued` in the result, api/publish.py's `task_dequeue`), sparing the consumer a fetch and an
    ack for each, one after the other, between two batches (measured on resnet50 with batches of 8: the pool
    process's idle gap between batches fell from 11-15 ms to 6-7 ms). Flower still hears of each of those jobs:
    the consumer sends the events their messages would have brought (received, then succeeded).
    """

    def __init__(self, kept: int = BATCH_MATES_KEPT) -> None:
        self.kept = kept
        self._leaders: OrderedDict[str, str] = OrderedDict()

    def remember(self, leader: str, result_repr: Any) -> list[str]:
        """Note the batch mates named in a finished `inference.run`'s result (Celery hands back its repr), but
        those it took off the queue, whose messages will not come: returns those."""
        if not isinstance(result_repr, str) or "batch_mates" not in result_repr:
            return []
        try:
            result = ast.literal_eval(result_repr)
            mates = [str(mate) for mate in result["batch_mates"]]
            dequeued = [str(mate) for mate in result.get("dequeued", ())]
        except (ValueError, SyntaxError, TypeError, KeyError, AttributeError, MemoryError, RecursionError):
            logger.warning("could not read the batch mates of job %s from its result", leader)
            return []
        taken = set(dequeued)
        for mate in mates:
            if mate not in taken:
                self._leaders[mate] = leader
        while len(self._leaders) > self.kept:
            self._leaders.popitem(last=False)
        return dequeued

    def leader_of(self, job_id: str) -> str | None:
        """The job whose batch ran `job_id`, once (its message is then done), or None."""
        return self._leaders.pop(job_id, None)

    def handler(self, on_task_request: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Wrap the worker's task handler: batch mates end here; every other `inference.run` is watched for
        the batch mates it names."""

        def handle(request: Any) -> Any:
            if request.name != TASK_NAME:
                return on_task_request(request)
            leader = self.leader_of(request.id)
            if leader is not None:
                task_ready(request, successful=True)
                request.acknowledge()
                request.send_event("task-succeeded", result=repr(f"ran in the batch of job {leader}"), runtime=0.0)
                return None
            on_success = request.on_success

            def on_success_noting_mates(failed__retval__runtime: tuple[Any, Any, Any], **kwargs: Any) -> Any:
                failed, retval, _ = failed__retval__runtime
                if not failed:
                    # Before the ack below lets the next message in.
                    for mate in self.remember(request.id, retval):
                        mate_events(request, mate)
                return on_success(failed__retval__runtime, **kwargs)

            request.on_success = on_success_noting_mates
            return on_task_request(request)

        return handle


def mate_events(leader: Any, job_id: str) -> None:
    """The task events a batch mate's message would have brought Flower, had it not been taken off the queue:
    received (as the leader's, for this job) and succeeded, sent through the leader's event dispatcher."""
    eventer = leader.eventer
    if eventer is None or not eventer.enabled or not leader.task.send_events:
        return
    kwargs = {"job_id": job_id}
    if isinstance(leader.kwargs, dict) and leader.kwargs.get("model"):
        kwargs["model"] = leader.kwargs["model"]
    eventer.send("task-received", uuid=job_id, name=leader.name, args="()", kwargs=repr(kwargs), root_id=job_id,
                 parent_id=None, retries=0, eta=None, expires=None)
    eventer.send("task-succeeded", uuid=job_id, result=repr(f"ran in the batch of job {leader.id}"), runtime=0.0)


class Consumer(CeleryConsumer):
    _event_flush_due = 0.0

    def __init__(self, on_task_request: Callable[[Any], Any], *args: Any, **kwargs: Any) -> None:
        self.batch_mates = BatchMates()
        super().__init__(self.batch_mates.handler(on_task_request), *args, **kwargs)

    def on_send_event_buffered(self) -> None:
        if not self.hub:
            return
        now = time.monotonic()
        # One timer per window. Keyed on time, not a flag: a timer lost with a reset hub cannot stall events.
        if now >= self._event_flush_due:
            self._event_flush_due = now + EVENT_FLUSH_S
            self.hub.call_later(EVENT_FLUSH_S, self._flush_events)

    def shutdown(self) -> None:
        # Events still buffered would be lost with the dispatcher: send them while the connection is up.
        try:
            self._flush_events()
        except Exception as exc:  # noqa: BLE001 - monitoring only; shutting down matters more
            logger.warning("task events still buffered at shutdown were not sent: %s", exc)
        super().shutdown()
