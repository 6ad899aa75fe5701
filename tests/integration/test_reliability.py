"""No job is lost, stuck or run twice when workers die, Redis restarts empty, queues fill or jobs overrun.

Real processes only: a private stack (harness.py) with Redis we can kill, workers we can kill -9, and
beat sweeping every second with 4-second leases, so recovery takes seconds instead of minutes.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from tests.integration.harness import Stack, echo_manifest, pid_alive, start_stack, stop_stack
from tests.integration.processes import BIN, free_port, task_events, wait_until

pytestmark = pytest.mark.integration

RUN = 300


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    manifests = [echo_manifest(timeout_s=3), echo_manifest("capped", max_queued=3, batch_size=1)]
    # Celery's line for each task a pool process ran, with its result (the batch mates it ended, the messages it
    # took off the queue), is left out at INFO by default (project/settings.py); the batch mates' test reads it.
    stack = start_stack(tmp_path_factory.mktemp("reliability"), manifests,
                        env={"LOG_LEVELS": "celery.app.trace=INFO"})
    yield stack
    stop_stack(stack)


def payloads(tag: str, n: int, seconds: float = 0.04) -> list[bytes]:
    """Inputs that hold the worker a little (so kills land mid-run) and differ, so each result is checkable."""
    return [f"sleep:{seconds}\n{tag} job {i}".encode() for i in range(n)]


def submit_all(stack: Stack, model: str, bodies: list[bytes]) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda b: stack.submit(model, b, "application/octet-stream"), bodies))
    assert [r.status_code for r in responses] == [202] * len(bodies), {r.status_code for r in responses}
    return [r.json()["id"] for r in responses]


def succeeded_so_far(stack: Stack, ids: list[str]) -> int:
    counts = stack.successes_logged()
    return sum(1 for i in ids if counts[i])


def running_logged(stack: Stack, ids: list[str]) -> set[str]:
    """This test's jobs the worker has logged as started but not (yet) as succeeded."""
    logs = stack.logs()
    started = set(re.findall(r"job started job_id=([0-9a-f-]{36})", logs))
    return (started - set(stack.successes_logged())) & set(ids)


def assert_every_job_succeeded_once(stack: Stack, ids: list[str], bodies: list[bytes],
                                    timeout: float = 150) -> list[dict]:
    rows = stack.wait_final(ids, timeout)
    jobs = [rows[i] for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), {j["status"] for j in jobs}
    for job, body in zip(jobs, bodies, strict=True):
        assert job["result"] == {"size": len(body), "sha256_prefix": hashlib.sha256(body).hexdigest()[:16]}
    # The worker logs `job succeeded` only when its guarded update wrote the row, so no job may be logged
    # twice. (Status `succeeded` above is the "at least once"; a SIGKILL can eat the log line of a write
    # that did land, so a missing line is not a missing write.)
    written = stack.successes_logged()
    assert {i: written[i] for i in ids if written[i] > 1} == {}
    return jobs


@contextmanager
def worker_stopped(stack: Stack) -> Iterator[None]:
    stack.stop("worker")
    try:
        yield
    finally:
        if "worker" not in stack.procs:
            stack.start_worker()
        stack.wait_worker_ready()


def test_batch_mates_messages_never_reach_a_pool_process_and_flower_still_sees_every_job(stack: Stack) -> None:
    """Jobs queued while the worker is down run in batches of 4; their own messages need not reach the pool:
    most are taken off the queue once their batch has ended them, the rest end in the consumer."""
    bodies = [f"mates job {i}".encode() for i in range(16)]
    with task_events(stack.env["REDIS_URL"]) as seen:
        with worker_stopped(stack):
            ids = submit_all(stack, "echo", bodies)
        jobs = assert_every_job_succeeded_once(stack, ids, bodies)
        wait_until(lambda: all("task-succeeded" in seen.get(i, []) for i in ids), 10, "every job's task events")
    assert max(j["timings"]["batch_size"] for j in jobs) > 1
    logs = stack.logs()
    # Celery logs each task its pool process ran, with the result: a batch's names its batch mates, and those
    # whose messages it took off the queue.
    ran = set(re.findall(r"Task inference\.run\[([0-9a-f-]{36})\] succeeded", logs)) & set(ids)
    mates = {m for names in re.findall(r"'batch_mates': \[([^\]]*)\]", logs)
             for m in re.findall(r"[0-9a-f-]{36}", names)} & set(ids)
    dequeued = {m for names in re.findall(r"'dequeued': \[([^\]]*)\]", logs)
                for m in re.findall(r"[0-9a-f-]{36}", names)} & set(ids)
    # With two pool processes a mate's message can reach the other process while its batch still runs (and
    # find its job taken); once the batch has ended, the pool process takes the mates' messages off the queue.
    assert dequeued and dequeued <= mates - ran, (dequeued, mates, ran)
    assert ran | mates == set(ids)
    # Flower hears of a job whose message was taken off the queue from the consumer, as of any other.
    assert {i: seen[i] for i in dequeued} == {i: ["task-received", "task-succeeded"] for i in dequeued}
    assert all(seen[i][-1] == "task-succeeded" for i in ids)
    broker = redis.Redis.from_url(stack.env["REDIS_URL"])
    wait_until(lambda: broker.llen("inferq.model.echo") == 0, 10, "the echo queue to empty")


def test_kill_9_of_worker_children_mid_run_loses_no_job_and_writes_each_result_once(stack: Stack) -> None:
    bodies = payloads("children", RUN)
    ids = submit_all(stack, "echo", bodies)

    killed = []
    for fraction in (0.2, 0.5):
        wait_until(lambda f=fraction: succeeded_so_far(stack, ids) >= RUN * f, 90, f"{fraction:.0%} done",
                   [stack.log("worker")])
        child = stack.worker_children()[0]
        child.send_signal(signal.SIGKILL)
        killed.append(child.pid)
        wait_until(lambda: len(stack.worker_children()) == 2 and killed[-1] not in
                   [c.pid for c in stack.worker_children()], 30, "a replacement child")

    jobs = assert_every_job_succeeded_once(stack, ids, bodies)
    # The kills landed mid-batch: some jobs lost their process and ran again.
    assert max(j["attempts"] for j in jobs) >= 2


def test_kill_9_of_the_whole_worker_mid_run_loses_no_job(stack: Stack) -> None:
    bodies = payloads("whole", RUN)
    ids = submit_all(stack, "echo", bodies)
    wait_until(lambda: succeeded_so_far(stack, ids) >= RUN * 0.3, 90, "30% done", [stack.log("worker")])
    killed = stack.procs["worker"].pid
    old = {j["worker"] for j in stack.jobs(ids).values() if j["status"] == "succeeded"}
    # Kill while a batch runs, not in the few milliseconds between batches when the pool only skips the
    # messages of jobs already taken into a batch (a kill there has nothing running to retry): right after a
    # job is seen running, with nothing in between (reading 300 jobs' states there once let the batch end).
    wait_until(lambda: running_logged(stack, ids), 30, "a job running", [stack.log("worker")])

    stack.stop("worker", signal.SIGKILL)  # the whole process group: the parent and its pool
    stack.start_worker()

    jobs = assert_every_job_succeeded_once(stack, ids, bodies)
    assert not pid_alive(killed)
    # Its pool was mid-batch when the worker died: those jobs ran again, and on the new worker.
    retried = [j for j in jobs if j["attempts"] >= 2]
    assert retried
    assert any(j["worker"] not in old for j in retried)


def assert_it_fails_and_the_next_job_runs(stack: Stack, body: bytes, *, code: str, attempts: int,
                                          timeout: float) -> None:
    """`body` submitted alone fails with `code` after `attempts` tries, and a job submitted after it succeeds."""
    (job_id,) = submit_all(stack, "echo", [body])

    job = stack.wait_job(job_id, timeout=timeout)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == code
    assert job["attempts"] == attempts
    (after,) = submit_all(stack, "echo", [b"right after " + body.split(b"\n")[-1]])
    assert stack.wait_job(after)["status"] == "succeeded"


def test_an_input_that_kills_its_worker_fails_worker_lost_after_three_tries(stack: Stack) -> None:
    # The worker survives all three: the next job runs.
    assert_it_fails_and_the_next_job_runs(stack, b"crash: this input takes its worker process down",
                                          code="worker_lost", attempts=3, timeout=90)


@contextmanager
def worker_with(stack: Stack, *options: str) -> Iterator[None]:
    """The stack's worker restarted with more `celery worker` options for the block, then as it was."""
    if not options:
        yield
        return
    stack.stop("worker")
    stack.start_worker("worker", *options)
    try:
        stack.wait_worker_ready()
        yield
    finally:
        stack.stop("worker")
        stack.start_worker()
        stack.wait_worker_ready()


# Under the solo pool each task runs in the worker's own process, where Celery enforces no time limit: the task
# enforces the model's itself there (workers/timelimit.py).
@pytest.mark.parametrize("pool", [(), ("--pool=solo",)], ids=["prefork", "solo"])
def test_a_job_over_its_time_limit_fails_with_timeout_and_the_worker_carries_on(stack: Stack,
                                                                                pool: tuple[str, ...]) -> None:
    with worker_with(stack, *pool):
        parent = stack.procs["worker"].pid
        # Under solo there are no pool processes: the tasks run in the worker itself.
        assert (stack.worker_children() == []) is bool(pool)
        assert_it_fails_and_the_next_job_runs(stack, b"sleep:8\nlonger than the model's 3 s", code="timeout",
                                              attempts=1, timeout=60)
        assert pid_alive(parent) and stack.procs["worker"].pid == parent


def test_a_job_running_while_redis_restarts_empty_still_completes(stack: Stack) -> None:
    bodies = [b"sleep:3\nrunning through the outage"]
    (job_id,) = submit_all(stack, "echo", bodies)
    wait_until(lambda: stack.job(job_id)["status"] == "running", 30, "the job to start")

    stack.kill_redis()
    time.sleep(1)
    stack.start_redis()

    assert_every_job_succeeded_once(stack, [job_id], bodies, timeout=60)
    after = [b"submitted after Redis came back"]
    assert_every_job_succeeded_once(stack, submit_all(stack, "echo", after), after, timeout=60)


def test_redis_outage_answers_503_fast_and_jobs_queued_before_it_complete_after(stack: Stack) -> None:
    bodies = payloads("outage", 12, seconds=0)
    with worker_stopped(stack):
        ids = submit_all(stack, "echo", bodies)  # their messages now live only in Redis' memory
        before = stack.session.get(f"{stack.base}/v1/jobs", headers=stack.headers, timeout=10).json()["count"]
        mark = stack.log("worker").stat().st_size
        stack.kill_redis()
        try:
            for i in range(3):
                started = time.monotonic()
                response = stack.submit("echo", f"during the outage {i}".encode(), "application/octet-stream")
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert elapsed <= 2.0, elapsed
                assert int(response.headers["Retry-After"]) > 0
                assert response.json() == {"error": {"code": "broker_unavailable", "message": response.json()[
                    "error"]["message"]}}
            assert requests.get(f"{stack.base}/readyz", timeout=10).status_code == 503
            # A refused submit leaves no job behind: a client's retry cannot create a twin.
            count = stack.session.get(f"{stack.base}/v1/jobs", headers=stack.headers, timeout=10).json()["count"]
            assert count == before
        finally:
            stack.start_redis()  # empty: every message published before the outage is gone

    assert_every_job_succeeded_once(stack, ids, bodies, timeout=90)
    # ...because the sweeper saw that Redis had lost its data and published the queued jobs again (those
    # not already taken into a batch by the first republished message).
    with open(stack.log("worker"), "rb") as fh:
        fh.seek(mark)
        assert re.search(rb"broker lost its messages; republished [1-9]\d* queued jobs", fh.read())


def test_a_frozen_redis_is_a_503_within_two_seconds_too(stack: Stack) -> None:
    """Redis that accepts connections but never answers (SIGSTOP): the web tier gives it 0.5 s and one retry."""
    redis = stack.procs["redis"]
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = stack.submit("echo", b"while Redis is frozen", "application/octet-stream")
        elapsed = time.monotonic() - started
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "broker_unavailable"
    assert elapsed <= 2.0, elapsed
    after = [b"after Redis thawed"]
    assert_every_job_succeeded_once(stack, submit_all(stack, "echo", after), after, timeout=60)


def test_a_full_queue_answers_429_and_the_model_shows_its_depth(stack: Stack) -> None:
    with worker_stopped(stack):
        ids = submit_all(stack, "capped", [b"one", b"two", b"three"])
        refused = stack.submit("capped", b"four", "application/octet-stream")

        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) > 0
        assert stack.model("capped")["queued"] == 3

    assert_every_job_succeeded_once(stack, ids, [b"one", b"two", b"three"], timeout=60)
    assert stack.model("capped")["queued"] == 0
    assert stack.submit("capped", b"four, again", "application/octet-stream").status_code == 202


def test_nothing_is_left_queued_or_running(stack: Stack) -> None:
    jobs = stack.session.get(f"{stack.base}/v1/jobs", params={"limit": 2000}, headers=stack.headers,
                             timeout=30).json()
    ended = stack.wait_final([j["id"] for j in jobs["results"]], 60)
    inputs = Path(stack.workdir / "media")
    # A kill -9 can land between a job's end and the deletion of its input; beat's clean-up then deletes
    # it. Leave one such file on purpose, so that path is exercised in every run, not only by chance.
    job_id, job = next(iter(ended.items()))
    left_over = inputs / "inputs" / job["created_at"][:10].replace("-", "/") / job_id
    left_over.parent.mkdir(parents=True, exist_ok=True)
    left_over.write_bytes(b"an input whose worker died before deleting it")
    wait_until(lambda: not [p for p in inputs.rglob("*") if p.is_file()], 30,
               "every finished job's input to be deleted", [stack.log("worker")])


def test_recycling_web_processes_drops_no_request(stack: Stack) -> None:
    """uWSGI replaces a web process after max-requests; clients on keep-alive connections lose nothing."""
    port = free_port()
    stack.start_with("web-recycle", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini", "--max-requests", "400",
                                     "--max-requests-delta", "0", "--min-worker-lifetime", "1"],
                     INFERQ_HTTP=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).ok, 60, "web", [stack.log("web-recycle")])
        mark = stack.log("web-recycle").stat().st_size
        failures: list[str] = []

        def client(n: int) -> int:
            session, ok = requests.Session(), 0
            for _ in range(n):
                try:
                    ok += session.get(f"{base}/v1/models/echo", headers=stack.headers, timeout=10).ok
                except requests.RequestException as exc:
                    failures.append(repr(exc))
            return ok

        with ThreadPoolExecutor(max_workers=16) as pool:
            answered = sum(pool.map(client, [250] * 16))

        with open(stack.log("web-recycle"), "rb") as fh:
            fh.seek(mark)
            recycled = fh.read().count(b"Respawned uWSGI worker")
        assert recycled >= 3, "the web processes were not recycled: the test proves nothing"
        assert failures == [] and answered == 16 * 250, failures[:5]
    finally:
        stack.stop("web-recycle")
