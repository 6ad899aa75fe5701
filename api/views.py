"""Thin DRF views: parse the request, call a service or selector, shape the answer."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from redis.exceptions import RedisError
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from api.apiview import ApiView
from api.events import batch_wait, job_wait, parse_prefer_wait, parse_query_wait
from api.exceptions import ApiError, InvalidInput, PayloadTooLarge, error_body
from api.heartbeats import workers_online
from api.inputs import ModelInput, input_from_bytes, input_from_json
from api.parsers import PartsParser, RawBytesParser, SafeJSONParser
from api.redis_client import get_redis
from api.schema import (
    BATCH,
    BATCH_ID,
    BATCH_WAIT,
    BULK_REQUEST,
    HEALTH,
    IDEMPOTENCY_KEY,
    JOB_ID,
    JOB_LIST,
    JOB_PAGE,
    MODEL,
    MODEL_LIST,
    NOT_READY,
    PAGE_PARAMETERS,
    PREFER,
    READY,
    SUBMIT_HEADERS,
    SUBMIT_REQUEST,
    VERSION,
    WAIT,
    ModelOutputSerializer,
    error_responses,
)
from api.selectors import (
    batch_describe,
    batch_get,
    batch_unfinished,
    job_get,
    job_key_used,
    job_list,
    model_describe,
    model_list,
)
from api.serializers import BatchCreateSerializer, JobListFilterSerializer, JobOutputSerializer, job_to_dict
from api.services import batch_create, job_cancel, job_create, jobs_create, model_spec_get
from api.throttling import SubmitRateThrottle
from workers.store import ModelSpec, get_store


def rendered(request: Request, data: Any, *, status_code: int = status.HTTP_200_OK) -> HttpResponse:
    """What `Response(data, status=status_code)` answers (the same bytes and headers), rendered at once by the
    renderer DRF's content negotiation chose instead of through TemplateResponse's deferred rendering: a job is
    answered on every submit and poll, and that machinery was 7% of a poll (in-process A/B, four rounds)."""
    renderer = request.accepted_renderer
    content_type = renderer.media_type if renderer.charset is None else \
        f"{renderer.media_type}; charset={renderer.charset}"
    return HttpResponse(renderer.render(data, request.accepted_media_type, {"request": request}),
                        status=status_code, content_type=content_type)


def job_response(request: Request, job: Any, *, status_code: int = status.HTTP_200_OK) -> HttpResponse:
    response = rendered(request, job_to_dict(job), status_code=status_code)
    if status_code == status.HTTP_202_ACCEPTED:
        response["Location"] = f"/v1/jobs/{job.id}"
        response["Retry-After"] = "1"
    return response


def submit_response(request: Request, job: Any, *, wait: float | None, replayed: bool = False) -> HttpResponse:
    """200 with the job once it has ended (a cache hit, a replay, or `Prefer: wait` met), else 202."""
    applied = False
    if wait is not None:
        job, applied = job_wait(job=job, timeout=wait)
    response = job_response(request, job,
                            status_code=status.HTTP_200_OK if job.is_final else status.HTTP_202_ACCEPTED)
    response["Location"] = f"/v1/jobs/{job.id}"
    if applied:
        response["Preference-Applied"] = f"wait={wait:g}"
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def submit_target(request: Request, model: str) -> tuple[ModelSpec, Any]:
    """What a submit names: the model (at `?version=`, else its latest) and the caller's batch at `?batch=`, if any."""
    spec = model_spec_get(name=model, version=request.query_params.get("version"))
    batch_id = request.query_params.get("batch")
    return spec, batch_get(user=request.user, batch_id=batch_id) if batch_id else None


def read_model_input(request: Request, spec: ModelSpec) -> ModelInput:
    """Raw bytes (image/*, application/x-npy), a multipart file `input`, or JSON."""
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > settings.INFERQ_MAX_INPUT_BYTES + 64 * 1024:
        raise PayloadTooLarge(f"Input is larger than the {settings.INFERQ_MAX_INPUT_BYTES}-byte limit.")
    media = (request.content_type or "").split(";")[0].strip().lower()
    if media == "application/json":
        return input_from_json(request.data, spec)
    if media == "multipart/form-data":
        upload = request.FILES.get("input")
        if upload is None:
            raise InvalidInput('Multipart requests carry the input in a file field named "input".',
                               code="empty_input")
        return input_from_bytes(upload.read(), upload.content_type or "application/octet-stream", spec)
    data = request.data if isinstance(request.data, bytes) else b""
    return input_from_bytes(data, media, spec)


class JobCreateApi(ApiView):
    parser_classes = [SafeJSONParser, MultiPartParser, RawBytesParser]
    throttle_classes = [SubmitRateThrottle]

    @extend_schema(
        operation_id="job_create",
        summary="Submit an input to a model",
        description="Answers `202` with the queued job, or `200` with the ended job: a result-cache hit (bytes "
                    "this model version already answered, `cached: true`), a repeated `Idempotency-Key`, or "
                    "`Prefer: wait=N` met. `Location` names the job either way.",
        parameters=[MODEL, VERSION,
                    OpenApiParameter("batch", str, description="file the job in this batch of yours"),
                    PREFER, IDEMPOTENCY_KEY, *SUBMIT_HEADERS],
        request=SUBMIT_REQUEST,
        responses={200: JobOutputSerializer, 202: JobOutputSerializer,
                   **error_responses(400, 401, 404, 409, 413, 415, 429, 503)},
    )
    def post(self, request: Request, model: str) -> HttpResponse:
        spec, batch = submit_target(request, model)
        model_input = read_model_input(request, spec)
        key = request.META.get("HTTP_IDEMPOTENCY_KEY") or None
        replayed = key is not None and job_key_used(user=request.user, idempotency_key=key)
        job = job_create(owner=request.user, spec=spec, model_input=model_input, batch=batch,
                         idempotency_key=key)
        return submit_response(request, job, wait=parse_prefer_wait(request.META.get("HTTP_PREFER")), replayed=replayed)


class JobBulkCreateApi(ApiView):
    parser_classes = [PartsParser]
    throttle_classes = [SubmitRateThrottle]

    @extend_schema(
        operation_id="job_bulk_create",
        summary="Submit several inputs to a model in one request",
        description="A `multipart/form-data` body with one file field named `input` per input (each part with "
                    "its own Content-Type), at most `INFERQ_MAX_BULK_INPUTS` of them. Every input is checked "
                    "first and the jobs are made all or none: a bad input is a 4xx naming it (its number, from "
                    "1, and its file name) and no job is made. Answers `202` with `{\"jobs\": [...]}` in the "
                    "inputs' order (`200` when every one was answered from the result cache at once). Counts "
                    "as one submit per input against the submit rate limit.",
        parameters=[MODEL, VERSION,
                    OpenApiParameter("batch", str, description="file the jobs in this batch of yours"),
                    *SUBMIT_HEADERS],
        request=BULK_REQUEST,
        responses={200: JOB_LIST, 202: JOB_LIST, **error_responses(400, 401, 404, 413, 415, 429, 503)},
    )
    def post(self, request: Request, model: str) -> HttpResponse:
        spec, batch = submit_target(request, model)
        if request.META.get("HTTP_IDEMPOTENCY_KEY"):
            raise InvalidInput("Idempotency-Key is taken on single submits only (a refused bulk submit made no "
                               "job, so it can be sent again as it was).", code="invalid_request")
        model_inputs = read_bulk_inputs(request, spec)
        throttle = SubmitRateThrottle()  # the request itself was counted as one submit; each further input too
        if not throttle.allow_hits(request, len(model_inputs) - 1, counted=1):
            self.throttled(request, throttle.wait())
        jobs = jobs_create(owner=request.user, spec=spec, model_inputs=model_inputs, batch=batch)
        ended = all(job.is_final for job in jobs)
        return rendered(request, {"jobs": [job_to_dict(job) for job in jobs]},
                        status_code=status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED)


def read_bulk_inputs(request: Request, spec: ModelSpec) -> list[ModelInput]:
    """Every part named `input` of a multipart body, checked in order; the first bad one is refused, named."""
    # The body as a whole is limited before the view runs (api/bodylimit.py: 413 from its Content-Length).
    parts = [part for part in request.data if part.name == "input"]
    if not parts:
        raise InvalidInput('A bulk submit carries its inputs as multipart file fields named "input".',
                           code="empty_input")
    model_inputs = []
    for number, part in enumerate(parts, start=1):
        try:
            model_inputs.append(input_from_bytes(part.data, part.content_type or "application/octet-stream", spec))
        except ApiError as exc:
            named = f"Input {number}" + (f" ({part.filename})" if part.filename else "")
            raise type(exc)(f"{named}: {exc.message} No job was made.", code=exc.code) from exc
    return model_inputs


class JobDetailApi(ApiView):
    @extend_schema(operation_id="job_get", summary="A job's status and result; `?wait=N` holds until it ends",
                   parameters=[JOB_ID, WAIT],
                   responses={200: JobOutputSerializer, **error_responses(400, 401, 404, 429)})
    def get(self, request: Request, job_id: str) -> HttpResponse:
        job = job_get(user=request.user, job_id=job_id)
        wait = parse_query_wait(request.query_params.get("wait")) if request.META.get("QUERY_STRING") else None
        if wait:
            job, _ = job_wait(job=job, timeout=wait)
        return job_response(request, job)


class JobPagination(LimitOffsetPagination):
    # A page is one query and one response held in memory whole: a client asking for more gets this many.
    max_limit = 1000


class JobListApi(ApiView):
    @extend_schema(operation_id="job_list", summary="The caller's jobs, newest first",
                   parameters=[JobListFilterSerializer, *PAGE_PARAMETERS],
                   responses={200: JOB_PAGE, **error_responses(400, 401, 429)})
    def get(self, request: Request) -> Response:
        filters = JobListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = job_list(user=request.user, filters=filters.validated_data)
        paginator = JobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response([job_to_dict(job) for job in page])


class JobCancelApi(ApiView):
    @extend_schema(operation_id="job_cancel", summary="Cancel a job that has not finished", request=None,
                   description="A queued job is never run (its message is skipped); a running job's result is "
                               "discarded. An ended job is returned unchanged.",
                   parameters=[JOB_ID], responses={200: JobOutputSerializer, **error_responses(401, 404, 429)})
    def post(self, request: Request, job_id: str) -> HttpResponse:
        job = job_get(user=request.user, job_id=job_id)
        return job_response(request, job_cancel(job=job))


class BatchCreateApi(ApiView):
    @extend_schema(operation_id="batch_create", summary="Open a batch to group jobs (`?batch=` on submit)",
                   request=BatchCreateSerializer,
                   responses={201: BATCH, **error_responses(400, 401, 404, 429)})
    def post(self, request: Request) -> Response:
        data = BatchCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = data.validated_data["model"]
        if model:
            model_spec_get(name=model)
        batch = batch_create(owner=request.user, name=data.validated_data["name"], model_name=model)
        return Response(batch_describe(batch=batch), status=status.HTTP_201_CREATED,
                        headers={"Location": f"/v1/batches/{batch.id}"})


class BatchDetailApi(ApiView):
    @extend_schema(operation_id="batch_get",
                   summary="A batch with its jobs counted by status; `?wait=N` holds until all have ended",
                   parameters=[BATCH_ID, BATCH_WAIT], responses={200: BATCH, **error_responses(400, 401, 404, 429)})
    def get(self, request: Request, batch_id: str) -> Response:
        batch = batch_get(user=request.user, batch_id=batch_id)
        wait = parse_query_wait(request.query_params.get("wait")) if request.META.get("QUERY_STRING") else None
        if wait:
            batch_wait(batch_id=batch.id, unfinished=lambda: batch_unfinished(batch=batch), timeout=wait)
        return Response(batch_describe(batch=batch))


class ModelListApi(ApiView):
    @extend_schema(operation_id="model_list", summary="Models being served",
                   responses={200: MODEL_LIST, **error_responses(401, 429)})
    def get(self, request: Request) -> Response:
        return Response({"models": model_list()})


class ModelDetailApi(ApiView):
    @extend_schema(operation_id="model_get", summary="One model: input spec, versions, workers, queue depth",
                   parameters=[MODEL], responses={200: ModelOutputSerializer, **error_responses(401, 404, 429)})
    def get(self, request: Request, model: str) -> Response:
        return Response(model_describe(model_spec_get(name=model)))


class HealthzApi(ApiView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="healthz", summary="Liveness: the web process answers", auth=[],
                   responses={200: HEALTH})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyzApi(ApiView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="readyz", summary="Readiness: database, broker, and a worker for each model",
                   auth=[], responses={200: READY, 503: NOT_READY})
    def get(self, request: Request) -> Response:
        checks: dict[str, Any] = {}
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            checks["database"] = "ok"
        except DatabaseError as exc:
            checks["database"] = f"error: {exc.__class__.__name__}"
        try:
            get_redis().ping()
            checks["broker"] = "ok"
            checks["models"] = {spec.name: len(workers_online(spec.name)) for spec in get_store().latest()}
        except RedisError as exc:
            checks["broker"] = f"error: {exc.__class__.__name__}"
        models = checks.get("models", {})
        ready = checks["database"] == "ok" and checks["broker"] == "ok" and bool(models) and all(models.values())
        if ready:
            return Response({"status": "ready", "checks": checks})
        missing = [name for name, count in models.items() if not count]
        reason = "no models in the store" if checks["broker"] == "ok" and not models else (
            f"no worker serves: {', '.join(missing)}" if missing else "a dependency is down")
        body = {**error_body("not_ready", f"Not ready: {reason}."), "checks": checks}
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
