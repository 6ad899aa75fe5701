"""Remote submission: the same run over HTTP (`--api URL --token TOKEN`), a bounded number of requests in flight.

Each input is POSTed as raw bytes with `?batch=` and an `Idempotency-Key`, so a request retried
after a timeout, or resubmitted by `--resume`, gets the job it already has instead of a twin.
429 and 503 answers are retried after their `Retry-After`; other 4xx answers are the input's error.
"""

from __future__ import annotations

import threading
from typing import Any

import requests  # type: ignore[import-untyped]  # no stubs installed

from api.bulk import BulkAbort, BulkError, ModelInfo, content_type_of, idempotency_key
from api.bulk_results import FINAL, Record, error_record, record_from_job

NET_TRIES = 5
TIMEOUT = (5.0, 60.0)  # connect, read (s)
# Jobs whose states one poll request reads (`GET /v1/jobs?id=…`, at most api.selectors.MAX_LISTED_IDS).
POLL_CHUNK = 100


def retry_after(response: requests.Response, default: float = 1.0) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", default)), 0.1), 30.0)
    except ValueError:
        return default


def api_error(response: requests.Response) -> tuple[str, str]:
    """(code, message) from the API's one error shape, or from the status line when the body is not it."""
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}", f"HTTP {response.status_code}: {response.text[:200]}"


class RemoteSubmitter:
    """POSTs files to `{api}/v1/models/{model}/jobs`; reads their states `GET /v1/jobs?id=…` 100 at a time, oldest
    first."""

    def __init__(self, *, api: str, token: str, model: str, version: str | None, stop: threading.Event) -> None:
        self.base = api.rstrip("/")
        self.token, self.model, self.version = token, model, version
        self.stop = stop
        self.batch_id = ""
        self._local = threading.local()
        self._one_by_one = False  # set when the server does not filter its job list by id

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Token {self.token}"
        return session

    def _call(self, method: str, path: str, *, retry_overload: bool = True, **kwargs: Any) -> requests.Response | None:
        """One API call, retried through network errors, 429 and 503; None when the run stops meanwhile."""
        tries = 0
        while True:
            try:
                response = self._session().request(method, self.base + path, timeout=TIMEOUT, **kwargs)
            except requests.RequestException as exc:
                tries += 1
                if tries >= NET_TRIES:
                    raise BulkAbort(f"{self.base} is unreachable ({exc.__class__.__name__}, {tries} tries)") from exc
                if self.stop.wait(min(2.0**tries, 10.0)):
                    return None
                continue
            if retry_overload and response.status_code in (429, 503):
                if self.stop.wait(retry_after(response)):
                    return None
                continue
            if response.status_code in (401, 403):
                raise BulkAbort("The API refused the token: " + api_error(response)[1])
            return response

    def model_info(self) -> ModelInfo:
        try:
            response = self._call("GET", f"/v1/models/{self.model}")
        except BulkAbort as exc:
            raise BulkError(str(exc)) from exc
        if response is None or response.status_code != 200:
            raise BulkError(api_error(response)[1] if response is not None else "stopped")
        body = response.json()
        if self.version and self.version not in [str(v) for v in body.get("versions") or [body["version"]]]:
            raise BulkError(f"Model {self.model!r} has no version {self.version!r} "
                            f"(has {', '.join(map(str, body.get('versions') or []))}).")
        notice = (f"Warning: no worker serves {self.model!r} right now; its jobs wait in the queue until one does."
                  if body.get("workers_online") == 0 else "")
        return ModelInfo(body["name"], self.version or str(body["version"]), int(body.get("top_k") or 5), notice)

    def open_batch(self, *, batch_id: str, name: str) -> str:
        if batch_id:
            response = self._call("GET", f"/v1/batches/{batch_id}")
            if response is not None and response.status_code == 200:
                self.batch_id = batch_id
                return batch_id
        response = self._call("POST", "/v1/batches", json={"name": name[:200], "model": self.model})
        if response is None or response.status_code != 201:
            reason = api_error(response)[1] if response is not None else "stopped"
            raise BulkError(f"Could not open a batch: {reason}")
        self.batch_id = str(response.json()["id"])
        return self.batch_id

    def load(self, path: str) -> Record | None:
        """Read one file and POST it (runs in a pool thread); None when stopped before it was accepted."""
        if self.stop.is_set():
            return None
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return error_record(path, "unreadable", f"Cannot read the file: {exc.strerror or exc}.")
        params = {"batch": self.batch_id, **({"version": self.version} if self.version else {})}
        headers = {"Content-Type": content_type_of(path), "Idempotency-Key": idempotency_key(self.batch_id, path)}
        response = self._call("POST", f"/v1/models/{self.model}/jobs", params=params, data=data, headers=headers)
        if response is None:
            return None
        if response.status_code in (200, 201, 202):
            return record_from_job(path, response.json())
        code, message = api_error(response)
        if response.status_code >= 500:
            code = "server_error"
        return error_record(path, code, message)

    def commit(self, loaded: Record | None, *, stopping: bool) -> Record | None:
        return loaded  # the POST already happened in the pool thread

    def _jobs(self, job_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """These jobs as the API lists them, by id (one `GET /v1/jobs?id=…`); a job missing from the answer no
        longer exists. None when the request failed (the walk stops; the next tick asks again).

        A server from before `?id=` ignores it and lists its newest jobs instead: seeing a job it did not ask
        for, the submitter reads each job on its own (`GET /v1/jobs/{id}`) from then on."""
        if self._one_by_one:
            return self._jobs_one_by_one(job_ids)
        try:
            response = self._session().get(f"{self.base}/v1/jobs", params={"id": ",".join(job_ids),
                                                                         "limit": len(job_ids)}, timeout=TIMEOUT)
            if response.status_code != 200:
                return None
            jobs = {str(job["id"]): job for job in response.json()["results"]}
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        if not jobs.keys() <= set(job_ids):
            self._one_by_one = True
            return self._jobs_one_by_one(job_ids)
        return jobs

    def _jobs_one_by_one(self, job_ids: list[str]) -> dict[str, dict[str, Any]] | None:
        jobs: dict[str, dict[str, Any]] = {}
        for job_id in job_ids:
            try:
                response = self._session().get(f"{self.base}/v1/jobs/{job_id}", timeout=TIMEOUT)
                if response.status_code == 200:
                    jobs[job_id] = response.json()
                elif response.status_code != 404:  # 404: gone, as when missing from a listing
                    return None
            except (requests.RequestException, ValueError):
                return None
        return jobs

    def poll(self, pending: dict[str, str]) -> list[Record]:
        """Ended jobs among `pending` (id -> path, oldest first), read POLL_CHUNK at a time in one request each.

        Workers take jobs roughly in order, so the walk stops at the first chunk where every job is still
        queued: a tick costs one request per POLL_CHUNK jobs that moved, plus one.
        """
        ids = list(pending)
        ended: list[Record] = []
        for start in range(0, len(ids), POLL_CHUNK):
            chunk = ids[start:start + POLL_CHUNK]
            jobs = self._jobs(chunk)
            if jobs is None:
                break
            moving = False
            for job_id in chunk:
                job = jobs.get(job_id)
                if job is None:
                    ended.append(error_record(pending[job_id], "not_found", f"Job {job_id} no longer exists.",
                                              job_id=job_id))
                    moving = True
                else:
                    if job.get("status") in FINAL:
                        ended.append(record_from_job(pending[job_id], job))
                    moving = moving or job.get("status") != "queued"
            if not moving:
                break
        return ended
