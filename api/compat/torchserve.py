"""TorchServe's inference API: `POST /predictions/{model}[/{version}]` answers with the prediction, `GET /ping`.

A client written for TorchServe works by changing its base URL. The body is the raw input
(any or no content type, as TorchServe takes it; `curl -T` PUTs it), or a multipart form whose
first file (`data` or `file` by TorchServe habit) is the input. The job goes through the same
queue as every other; the request waits for it (pub/sub) and answers as TorchServe's default
handlers do: an image classifier's top-k as `{"label": probability, ...}`, a tensor model's
output as a list. Errors have TorchServe's shape, `{"code": 404, "type": "ModelNotFoundException",
"message": "..."}`, not InferQ's, because that is what these clients parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from redis.exceptions import RedisError
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from api.apiview import ApiView
from api.compat.auth import COMPAT_AUTHENTICATION
from api.compat.sync import jobs_run_sync
from api.exceptions import ApiError, InvalidInput, PayloadTooLarge, error_headers
from api.inputs import ModelInput, input_from_bytes, input_from_json
from api.models import Job, JobStatus
from api.schema import FirstRendererNegotiation
from api.services import model_spec_get
from api.throttling import SubmitRateThrottle
from workers.store import ModelSpec, get_store

INPUT_ERRORS = {"invalid_image", "invalid_tensor", "image_too_large", "invalid_input", "empty_input"}
_TYPES = {400: "BadRequestException", 401: "AuthenticationException", 404: "ModelNotFoundException",
          405: "MethodNotAllowedException", 413: "RequestEntityTooLargeException",
          415: "BadRequestException", 429: "ServiceUnavailableException", 503: "ServiceUnavailableException",
          504: "ServiceUnavailableException"}

TS_ERROR = inline_serializer("TorchServeError", {"code": serializers.IntegerField(),
                                                 "type": serializers.CharField(),
                                                 "message": serializers.CharField()})


def torchserve_error(status: int, message: str, *, kind: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    body = {"code": status, "type": kind or _TYPES.get(status, "InternalServerException"), "message": message}
    return Response(body, status=status, headers=headers)


def torchserve_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every refusal in TorchServe's error shape (an unexpected error still reaches the JSON 500 middleware)."""
    if isinstance(exc, ApiError):
        kind = "ModelNotFoundException" if exc.code == "unknown_model" else None
        return torchserve_error(exc.status_code, exc.message, kind=kind, headers=error_headers(exc))
    if isinstance(exc, drf_exceptions.APIException):
        return torchserve_error(exc.status_code, str(exc.detail), headers=error_headers(exc))
    return None


def read_prediction_input(request: Request, spec: ModelSpec) -> ModelInput:
    """Raw body (any content type, or none), the first file of a multipart form, or JSON for tensor models."""
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > settings.INFERQ_MAX_INPUT_BYTES + 64 * 1024:
        raise PayloadTooLarge(f"Input is larger than the {settings.INFERQ_MAX_INPUT_BYTES}-byte limit.")
    media = (request.META.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        upload = request._request.FILES.get("data") or request._request.FILES.get("file") or next(
            iter(request._request.FILES.values()), None)
        if upload is None:
            raise InvalidInput("The multipart form carries no file.", code="empty_input")
        return input_from_bytes(upload.read(), upload.content_type or "application/octet-stream", spec)
    data = request._request.body
    if media == "application/json" and spec.input.get("kind") == "tensor":
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise InvalidInput(f"Body is not JSON: {exc}.", code="invalid_json") from exc
        tensor = payload.get("data", payload.get("instances")) if isinstance(payload, dict) else payload
        return input_from_json({"input": {"data": tensor}}, spec)
    if not media.startswith("image/") and media not in ("application/x-npy", "application/npy"):
        media = "application/octet-stream"  # TorchServe ignores the type; requests and curl send odd ones
    return input_from_bytes(data, media, spec)


def prediction_body(job: Job, spec: ModelSpec) -> Any:
    """TorchServe's default handlers' answers: {label: probability} for classifiers, a list for tensors."""
    result = job.result or {}
    if "predictions" in result:
        return {p["label"]: p["probability"] for p in result["predictions"]}
    if "output" in result:
        return result["output"]
    return result


def job_failure_response(job: Job) -> Response:
    if job.status == JobStatus.FAILED and job.error_code in INPUT_ERRORS:
        return torchserve_error(400, f"{job.error_code}: {job.error_message}")
    reason = f"{job.error_code}: {job.error_message}" if job.error_code else f"job {job.status}"
    return torchserve_error(503, f"Prediction failed ({reason}).", kind="InternalServerException")


class TorchServeView(ApiView):
    authentication_classes = COMPAT_AUTHENTICATION
    content_negotiation_class = FirstRendererNegotiation

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return torchserve_exception_handler


PREDICTION_SCHEMA = extend_schema(
    operation_id="torchserve_predict",
    summary="TorchServe: run a model and answer with its prediction",
    description="The raw input as the body (any content type), or a multipart form whose first file is the "
                "input. Waits for the job (up to `INFERQ_COMPAT_TIMEOUT` s) and answers as TorchServe does. "
                "Authorization: `Bearer <token>` or `Token <token>` (none needed with "
                "`INFERQ_COMPAT_ALLOW_ANONYMOUS=1`).",
    tags=["TorchServe compatibility"],
    request={"application/octet-stream": OpenApiTypes.BINARY, "image/*": OpenApiTypes.BINARY},
    responses={
        200: OpenApiResponse(OpenApiTypes.OBJECT, description="An image classifier's `{label: probability}` "
                                                              "(top-k); a tensor model's output list."),
        **{code: OpenApiResponse(TS_ERROR, description=_TYPES[code]) for code in (400, 401, 404, 413, 429, 503, 504)},
    },
)


class PredictionsApi(TorchServeView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [SubmitRateThrottle]

    def predict(self, request: Request, model: str, version: str | None = None) -> Response:
        spec = model_spec_get(name=model, version=version)
        [job] = jobs_run_sync(owner=request.user, spec=spec, inputs=[read_prediction_input(request, spec)])
        if job.status != JobStatus.SUCCEEDED:
            return job_failure_response(job)
        return Response(prediction_body(job, spec), headers={"X-InferQ-Job": str(job.id)})

    @extend_schema(parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)])
    @PREDICTION_SCHEMA
    def post(self, request: Request, model: str) -> Response:
        return self.predict(request, model)

    @extend_schema(operation_id="torchserve_predict_put",
                   parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)])
    @PREDICTION_SCHEMA
    def put(self, request: Request, model: str) -> Response:
        return self.predict(request, model)


class PredictionsVersionApi(PredictionsApi):
    @extend_schema(operation_id="torchserve_predict_version",
                   parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH),
                               OpenApiParameter("version", OpenApiTypes.STR, OpenApiParameter.PATH)])
    @PREDICTION_SCHEMA
    def post(self, request: Request, model: str, version: str) -> Response:  # type: ignore[override]
        return self.predict(request, model, version)

    @extend_schema(operation_id="torchserve_predict_version_put",
                   parameters=[OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH),
                               OpenApiParameter("version", OpenApiTypes.STR, OpenApiParameter.PATH)])
    @PREDICTION_SCHEMA
    def put(self, request: Request, model: str, version: str) -> Response:  # type: ignore[override]
        return self.predict(request, model, version)


class PingApi(TorchServeView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(operation_id="torchserve_ping", summary="TorchServe: health", tags=["TorchServe compatibility"],
                   auth=[], responses={200: inline_serializer("TorchServePing", {"status": serializers.CharField()}),
                                       500: inline_serializer("TorchServePingUnhealthy",
                                                              {"status": serializers.CharField()})})
    def get(self, request: Request) -> Response:
        from api.heartbeats import workers_online

        try:
            specs = get_store().latest()
            healthy = bool(specs) and all(workers_online(spec.name) for spec in specs)
        except RedisError:
            healthy = False
        if healthy:
            return Response({"status": "Healthy"})
        return Response({"status": "Unhealthy"}, status=500)
