"""HTTP load from Python threads over keep-alive connections (http.client: little client-side CPU)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

FINAL = {"succeeded", "failed", "canceled"}


def multipart(items: list[tuple[bytes, str]], field: str = "input") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per (bytes, content type), all named `field`: (body, its
    Content-Type header)."""
    boundary = f"inferq-{uuid.uuid4().hex}"
    parts = []
    for number, (data, content_type) in enumerate(items, start=1):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{number}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode())
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection; reconnects if the server closed it."""

    def __init__(self, base: str, token: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = {"Authorization": f"Token {token}"}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, *,
             expect: tuple[int, ...] = (200,), what: str) -> Any:
        """The answer's JSON; an unexpected status raises, naming `what` was asked."""
        status, answer = self.request(method, path, body, headers)
        if status not in expect:
            raise RuntimeError(f"{what} answered {status}: {answer[:200]!r}")
        return json.loads(answer)

    def submit(self, model: str, data: bytes, content_type: str, wait: int = 0,
               batch: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": content_type}
        if wait:
            headers["Prefer"] = f"wait={wait}"
        query = f"?batch={batch}" if batch else ""
        return self.call("POST", f"/v1/models/{model}/jobs{query}", data, headers, expect=(200, 202), what="submit")

    def submit_many(self, model: str, items: list[tuple[bytes, str]], batch: str | None = None) -> list[dict[str, Any]]:
        """Several inputs in one bulk submit (`POST /v1/models/{model}/jobs/bulk`, one multipart part each)."""
        body, content_type = multipart(items)
        query = f"?batch={batch}" if batch else ""
        return self.call("POST", f"/v1/models/{model}/jobs/bulk{query}", body, {"Content-Type": content_type},
                         expect=(200, 202), what="bulk submit")["jobs"]

    def result(self, job: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        """Wait for a job to end: long-poll with ?wait= (sleeping between polls if the server returns early)."""
        deadline = time.monotonic() + timeout
        while job["status"] not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job['id']} still {job['status']}")
            started = time.monotonic()
            status, body = self.request("GET", f"/v1/jobs/{job['id']}?wait=30")
            job = json.loads(body)
            if job["status"] not in FINAL and time.monotonic() - started < 0.005:
                # The server answered without holding the request (its wait slots are taken):
                # back off instead of spinning, or the polls eat the cores the worker needs.
                time.sleep(0.2)
        return job


def run_jobs(base: str, token: str, model: str, items: list[tuple[bytes, str]],
             concurrency: int = 16) -> tuple[float, list[dict[str, Any]]]:
    """Submit every item and collect every result, `concurrency` jobs in flight; (seconds, jobs)."""
    local = threading.local()

    def one(item: tuple[bytes, str]) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = Client(base, token)
        return local.client.result(local.client.submit(model, item[0], item[1]))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        jobs = list(pool.map(one, items))
    return time.perf_counter() - started, jobs


def run_bulk(base: str, token: str, model: str, items: list[tuple[bytes, str]],
             connections: int = 12) -> tuple[float, list[dict[str, Any]]]:
    """Submit every item, then collect every result, over `connections` keep-alive connections (each submits
    its share, then waits for each of its jobs in turn): every job in flight at once, as when a folder is
    pushed in bulk. (seconds from the first submit to the last result, jobs in the items' order)."""
    shares = [items[i::connections] for i in range(connections)]

    def one(share: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
        client = Client(base, token)
        submitted = [client.submit(model, data, content_type) for data, content_type in share]
        return [client.result(job) for job in submitted]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections) as pool:
        done = list(pool.map(one, shares))
    elapsed = time.perf_counter() - started
    return elapsed, [done[i % connections][i // connections] for i in range(len(items))]


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def run_batch(base: str, token: str, model: str, items: list[tuple[bytes, str]],
              connections: int = 12, timeout: float = 600,
              marks: dict[str, float] | None = None, per_request: int = 1) -> tuple[float, list[dict[str, Any]]]:
    """Push a folder's worth the way the API offers for it: open a batch, submit every item into it over
    `connections` keep-alive connections (`per_request` inputs in each request: a bulk submit from 2 on), wait
    for the batch to end (`GET /v1/batches/{id}?wait=`, one held request whatever the batch's size), then read
    every result a page of 1000 jobs at a time.
    (seconds from opening the batch to the last page, jobs in the items' order). `marks`, if given, gets the wall
    clock (`time.time()`) as the batch is opened, once every submit is answered and once the last page is read."""
    head = Client(base, token)
    marks = {} if marks is None else marks
    marks["opened"] = time.time()
    started = time.perf_counter()
    batch = head.call("POST", "/v1/batches", json.dumps({"model": model}).encode(),
                      {"Content-Type": "application/json"}, expect=(201,), what="opening a batch")["id"]
    ids = [""] * len(items)

    def one(share: range) -> None:
        client = Client(base, token)
        if per_request > 1:
            for start in range(0, len(share), per_request):
                chunk = share[start:start + per_request]
                jobs = client.submit_many(model, [items[i] for i in chunk], batch=batch)
                for i, job in zip(chunk, jobs, strict=True):
                    ids[i] = job["id"]
            return
        for i in share:
            ids[i] = client.submit(model, *items[i], batch=batch)["id"]

    with ThreadPoolExecutor(max_workers=connections) as pool:
        list(pool.map(one, [range(i, len(items), connections) for i in range(connections)]))
    marks["submitted"] = time.time()
    deadline = time.monotonic() + timeout
    while True:
        counts = head.call("GET", f"/v1/batches/{batch}?wait=60", what="waiting on the batch")["counts"]
        if counts["queued"] + counts["running"] == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch} still has {counts['queued'] + counts['running']} jobs to run")
        time.sleep(0.2)  # answered without holding the request (no wait slot free): back off, never spin
    jobs: dict[str, dict[str, Any]] = {}
    path: str | None = f"/v1/jobs?batch={batch}&limit=1000"
    while path:
        page = head.call("GET", path, what="listing the batch's jobs")
        jobs.update((job["id"], job) for job in page["results"])
        path = _path_and_query(page["next"]) if page["next"] else None
    elapsed = time.perf_counter() - started
    marks["listed"] = time.time()
    return elapsed, [jobs[job_id] for job_id in ids]


def rate(base: str, token: str, make_request: Callable[[], tuple[str, str, bytes | None, dict[str, str]]],
         seconds: float, threads: int = 4) -> tuple[float, int]:
    """Requests per second answered 2xx over `seconds`, from `threads` keep-alive clients; (rate, errors)."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors = [0] * threads

    def loop(i: int) -> None:
        client = Client(base, token)
        while time.perf_counter() < stop:
            method, path, body, headers = make_request()
            status, _ = client.request(method, path, body, headers)
            if 200 <= status < 300:
                counts[i] += 1
            else:
                errors[i] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - started), sum(errors)


# The order api_rates measures them in, round after round.
API_KINDS = ("trivial", "submit", "poll")


def api_rates(base: str, token: str, *, png: bytes, job_id: str, seconds: float, rounds: int,
              threads: int) -> dict[str, list[float]]:
    """The trivial view's, a submit's and a status poll's req/s, taken in turn `rounds` times (`seconds` in all
    per kind), so that each round compares the three over the same minute of a drifting host; plus the
    submits that did not answer 2xx ("submit_errors"). The trivial view is measured once more at the end, so that
    every submit and poll has a trivial measurement on either side of it (`api_ratios`)."""
    kinds: dict[str, Callable[[], tuple[str, str, bytes | None, dict[str, str]]]] = {
        "trivial": lambda: ("GET", "/_bench/trivial", None, {}),
        "submit": lambda: ("POST", "/v1/models/digits/jobs", png, {"Content-Type": "image/png"}),
        "poll": lambda: ("GET", f"/v1/jobs/{job_id}", None, {}),
    }
    found: dict[str, list[float]] = {kind: [] for kind in (*API_KINDS, "submit_errors")}
    for _ in range(rounds):
        for kind in API_KINDS:
            per_s, errors = rate(base, token, kinds[kind], seconds / rounds, threads)
            found[kind].append(per_s)
            if kind == "submit":
                found["submit_errors"].append(errors)
    found["trivial"].append(rate(base, token, kinds["trivial"], seconds / rounds, threads)[0])
    return found


def api_ratios(found: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each round's submit and poll rate over the trivial view's at the same moment: interpolated linearly
    between the trivial measurements that open this round and the next (`api_rates`' order: trivial, submit,
    poll, trivial, ...). The host's speed drifts within a round, so the trivial view is read at the slot each
    measurement took, as (b) is compared with the limit measured on either side of it."""
    trivial = found["trivial"]
    ratios = {}
    for slot, kind in enumerate(API_KINDS[1:], start=1):
        share = slot / len(API_KINDS)
        ratios[kind] = [rate / (trivial[i] * (1 - share) + trivial[i + 1] * share)
                        for i, rate in enumerate(found[kind])]
    return ratios
