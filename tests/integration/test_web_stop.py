"""A stopped web tier exits in seconds, also when its processes run a thread of their own.

A web process that has counted an ended job for /metrics runs the tally's flusher thread (api/metrics.py). uWSGI
used to tear Python down at a worker's exit (Py_Finalize), and that teardown hung now and then with the thread
alive: measured with `make run`, one stop in three left a web process behind until it was killed (`web did not
stop in time`), and a process recycled after `max-requests` would wait out uWSGI's mercy (60 s) the same way.
uwsgi.ini now skips the teardown (`skip-atexit-teardown`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.integration.harness import Stack, echo_manifest, write_store
from tests.integration.processes import BIN, base_env, free_port, wait_until

pytestmark = pytest.mark.integration

STOPS = 6  # one stop in two or three hung before the fix: six make a pass without it unlikely
PROCESSES = 4


def tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_stacks(group: int) -> str:
    """Every thread's native stack in each live process of a process group, read with gdb where it is installed
    (a hang that comes once in dozens of stops under load is otherwise a failure with nothing to read)."""
    if not shutil.which("gdb"):
        return "(no gdb to read the stuck processes' stacks)"
    found = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
    stacks = []
    for pid in found:
        dump = subprocess.run(["gdb", "-p", pid, "-batch", "-ex", "thread apply all bt"], capture_output=True,
                              text=True, timeout=60).stdout
        stacks.append(f"== process {pid}\n" + "\n".join(line for line in dump.splitlines()
                                                      if line.startswith(("#", "Thread "))))
    return "\n".join(stacks)


def test_web_processes_running_the_metrics_thread_stop_within_seconds(tmp_path: Path) -> None:
    store = write_store(tmp_path / "store", [echo_manifest()])
    env = base_env(tmp_path, store)
    redis_port, port = free_port(), free_port()
    env.update({"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "INFERQ_HTTP": f"127.0.0.1:{port}",
                "INFERQ_WEB_PROCESSES": str(PROCESSES), "INFERQ_WEB_THREADS": "4"})
    svc = Stack(base=f"http://127.0.0.1:{port}", token="", env=env, store=store, workdir=tmp_path)
    svc.redis_port = redis_port
    try:
        svc.start_redis()
        svc.manage("migrate", "--verbosity", "0")
        svc.token = svc.manage("inferq_token", "--username", "stopper")
        for stop in range(STOPS):
            web = svc.start("web", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"])
            wait_until(lambda: requests.get(f"{svc.base}/healthz", timeout=2).ok, 60, "web", [svc.log("web")])
            workers = svc.web_processes()
            threads_before = {pid: tasks(pid) for pid in workers}
            # No worker runs: each job stays queued, and canceling it ends it in the web process that answers,
            # which counts it for /metrics and so starts that process's flusher thread. A new connection per
            # request spreads them over the processes.
            for i in range(8 * PROCESSES):
                job = svc.submit("echo", f"stop {stop} job {i}".encode(), "application/octet-stream").json()
                answer = requests.post(f"{svc.base}/v1/jobs/{job['id']}/cancel", headers=svc.headers, timeout=10)
                assert answer.json()["status"] == "canceled", answer.text
            with_thread = [pid for pid in workers if tasks(pid) > threads_before[pid]]
            assert with_thread, "no web process started its metrics thread: the test would test nothing"

            started = time.monotonic()
            os.killpg(web.pid, signal.SIGTERM)  # as `make run` and process managers stop it
            svc.procs.pop("web", None)
            stacks = ""
            try:
                web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stacks = thread_stacks(web.pid)  # where each process of the stuck tier waits, before it is killed
                os.killpg(web.pid, signal.SIGKILL)
                web.wait()
            took = time.monotonic() - started
            assert took < 5, f"stop {stop + 1}: the web tier took {took:.1f} s to stop (killed after 10 s); " \
                             f"{len(with_thread)} of {PROCESSES} processes ran the thread\n{stacks}"
    finally:
        svc.stop_together(list(svc.procs))
