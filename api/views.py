"""Thin DRF views: parse the request, call a service or selector, shape the answer."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from redis.exceptions import RedisError
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.exceptions import InvalidInput, PayloadTooLarge, error_body
from api.heartbeats import workers_online
from api.inputs import ModelInput, input_from_bytes, input_from_json
from api.parsers import RawBytesParser
from api.redis_client import get_redis
from api.selectors import job_get, job_list, model_describe, model_list
from api.serializers import JobListFilterSerializer, JobOutputSerializer
from api.services import job_cancel, job_create, model_spec_get
from workers.store import ModelSpec, get_store


def job_response(job: Any, *, status_code: int = status.HTTP_200_OK) -> Response:
    response = Response(JobOutputSerializer(job).data, status=status_code)
    if status_code == status.HTTP_202_ACCEPTED:
        response["Location"] = f"/v1/jobs/{job.id}"
        response["Retry-After"] = "1"
    return response


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
        if upload.size > settings.INFERQ_MAX_INPUT_BYTES:
            raise PayloadTooLarge(f"Input is larger than the {settings.INFERQ_MAX_INPUT_BYTES}-byte limit.")
        return input_from_bytes(upload.read(), upload.content_type or "application/octet-stream", spec)
    data = request.data if isinstance(request.data, bytes) else b""
    return input_from_bytes(data, media, spec)


class JobCreateApi(APIView):
    parser_classes = [JSONParser, MultiPartParser, RawBytesParser]

    @extend_schema(
        operation_id="job_create",
        summary="Submit an input to a model",
        parameters=[OpenApiParameter("version", str, description="model version (default: latest)")],
        request={"image/*": bytes, "application/x-npy": bytes, "multipart/form-data": dict,
                 "application/json": dict},
        responses={202: JobOutputSerializer},
    )
    def post(self, request: Request, model: str) -> Response:
        spec = model_spec_get(name=model, version=request.query_params.get("version"))
        model_input = read_model_input(request, spec)
        job = job_create(owner=request.user, spec=spec, model_input=model_input,
                         idempotency_key=request.headers.get("Idempotency-Key"))
        return job_response(job, status_code=status.HTTP_202_ACCEPTED)


class JobDetailApi(APIView):
    @extend_schema(operation_id="job_get", summary="A job's status and result", responses=JobOutputSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        return job_response(job_get(user=request.user, job_id=job_id))


class JobListApi(APIView):
    @extend_schema(operation_id="job_list", summary="The caller's jobs, newest first",
                   parameters=[JobListFilterSerializer], responses=JobOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = JobListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = job_list(user=request.user, filters=filters.validated_data)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobOutputSerializer(page, many=True).data)


class JobCancelApi(APIView):
    @extend_schema(operation_id="job_cancel", summary="Cancel a job that has not finished", request=None,
                   responses=JobOutputSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        job = job_get(user=request.user, job_id=job_id)
        return job_response(job_cancel(job=job))


class ModelListApi(APIView):
    @extend_schema(operation_id="model_list", summary="Models being served")
    def get(self, request: Request) -> Response:
        return Response({"models": model_list()})


class ModelDetailApi(APIView):
    @extend_schema(operation_id="model_get", summary="One model: input spec, versions, workers, queue depth")
    def get(self, request: Request, model: str) -> Response:
        return Response(model_describe(model_spec_get(name=model)))


class HealthzApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="healthz", summary="Liveness: the web process answers")
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyzApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="readyz", summary="Readiness: database, broker, and a worker for each model")
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
