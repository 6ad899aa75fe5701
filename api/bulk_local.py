"""In-process submission: the API's own validation and `job_create`, against the configured database and broker."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from api.bulk import BulkAbort, BulkError, ModelInfo, content_type_of, idempotency_key
from api.bulk_results import Record, error_record, record_from_job
from api.exceptions import ApiError, NotFound, Overloaded, ServiceUnavailable
from api.heartbeats import workers_online
from api.inputs import ModelInput, input_from_bytes
from api.models import ACTIVE_STATUSES, Batch, Job
from api.serializers import JobOutputSerializer
from api.services import batch_create, job_create, model_spec_get

BROKER_TRIES = 5
CHUNK = 900  # ids per query: below SQLite's oldest bound on query parameters


def check_broker() -> None:
    """Fail at once, with a hint, when the broker is unreachable (`make run`'s embedded Redis has its own port)."""
    from project.celery import app

    with app.connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=1, timeout=2)
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise BulkError(f"Cannot reach the broker at {conn.as_uri()} ({exc}). Set REDIS_URL to the broker "
                            "the service uses (`make run` prints it), or submit over HTTP with --api and --token."
                            ) from exc


@dataclass(frozen=True)
class Loaded:
    path: str
    model_input: ModelInput


class LocalSubmitter:
    """Validates each file as the API would, then creates its job with `job_create` (same rules, same queue)."""

    def __init__(self, *, username: str, model: str, version: str | None, stop: threading.Event) -> None:
        try:
            self.spec = model_spec_get(name=model, version=version)
        except NotFound as exc:
            raise BulkError(exc.message) from exc
        self.user: AbstractBaseUser = get_user_model().objects.get_or_create(username=username)[0]
        self.stop = stop
        self.batch: Batch | None = None
        check_broker()

    def model_info(self) -> ModelInfo:
        try:
            workers: int | None = len(workers_online(self.spec.name))
        except RedisError:
            workers = None
        notice = (f"Warning: no worker serves {self.spec.name!r} on this broker right now; its jobs wait in the "
                  f"queue until one does. Is REDIS_URL ({settings.REDIS_URL}) the service's?") if workers == 0 else ""
        return ModelInfo(self.spec.name, self.spec.version, self.spec.top_k, notice)

    def open_batch(self, *, batch_id: str, name: str) -> str:
        if batch_id:
            self.batch = Batch.objects.filter(id=batch_id, owner=self.user).first()
        if self.batch is None:
            self.batch = batch_create(owner=self.user, name=name, model_name=self.spec.name)
        return str(self.batch.id)

    def load(self, path: str) -> Loaded | Record:
        """Read and check one file (runs in a pool thread; touches no database)."""
        try:
            size = os.path.getsize(path)
            if size > settings.INFERQ_MAX_INPUT_BYTES:
                return error_record(path, "too_large",
                                    f"Input is larger than the {settings.INFERQ_MAX_INPUT_BYTES}-byte limit.")
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            return error_record(path, "unreadable", f"Cannot read the file: {exc.strerror or exc}.")
        try:
            return Loaded(path, input_from_bytes(data, content_type_of(path), self.spec))
        except ApiError as exc:
            return error_record(path, exc.code, exc.message)

    def commit(self, loaded: Loaded | Record, *, stopping: bool) -> Record | None:
        if isinstance(loaded, Record):
            return loaded
        if stopping:
            return None
        assert self.batch is not None
        tries = 0
        while True:
            try:
                job = job_create(owner=self.user, spec=self.spec, model_input=loaded.model_input, batch=self.batch,
                                 idempotency_key=idempotency_key(str(self.batch.id), loaded.path))
                return self._record(loaded.path, job)
            except Overloaded as exc:  # the model's queue is full: wait for the workers to drain it
                if self.stop.wait(exc.retry_after or 5):
                    return None
            except ServiceUnavailable as exc:
                tries += 1
                if tries >= BROKER_TRIES:
                    raise BulkAbort(f"{exc.message} ({exc.code}, {tries} tries)") from exc
                if self.stop.wait(min(2.0**tries, 10.0)):
                    return None
            except ApiError as exc:
                return error_record(loaded.path, exc.code, exc.message)

    def poll(self, pending: dict[str, str]) -> list[Record]:
        """The jobs among `pending` (id -> path) that ended: one small query per chunk, full rows only for those."""
        ids = list(pending)
        ended: list[Record] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            states = dict(Job.objects.filter(id__in=chunk).values_list("id", "status"))
            states = {str(k): v for k, v in states.items()}
            done = [i for i in chunk if i in states and states[i] not in ACTIVE_STATUSES]
            for job in Job.objects.filter(id__in=done):
                ended.append(self._record(pending[str(job.id)], job))
            ended += [error_record(pending[i], "not_found", f"Job {i} no longer exists.", job_id=i)
                      for i in chunk if i not in states]
        return ended

    def _record(self, path: str, job: Job) -> Record:
        data: dict[str, Any] = JobOutputSerializer(job).data
        return record_from_job(path, data)
