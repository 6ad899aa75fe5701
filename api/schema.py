"""OpenAPI building blocks: the error shape, its codes per status, headers and documented bodies.

Views use these in `@extend_schema` so `/v1/schema` (and Swagger UI at `/v1/docs`) shows every
parameter, header and error code a client can meet.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request", "invalid_request", "invalid_input", "empty_input", "invalid_image", "image_too_large",
          "invalid_json", "invalid_base64", "invalid_tensor"),
    401: ("not_authenticated", "authentication_failed"),
    404: ("not_found", "unknown_model"),
    409: ("idempotency_key_reused",),
    413: ("too_large",),
    415: ("unsupported_media_type",),
    429: ("throttled", "queue_full"),
    503: ("broker_unavailable", "database_unavailable", "not_ready", "wait_slots_full"),
    504: ("timeout",),
}
_WHAT = {400: "Bad request", 401: "Missing or invalid token", 404: "Not found", 409: "Conflict",
         413: "Input too large", 415: "Unsupported content type",
         429: "Too many requests (see `Retry-After`)", 503: "Service unavailable (see `Retry-After`)",
         504: "The job did not end in time"}


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable error code.")
    message = serializers.CharField(help_text="What went wrong, for a person.")


class ErrorSerializer(serializers.Serializer):
    """Every InferQ error: `{"error": {"code", "message"}}`."""

    error = ErrorDetailSerializer()


def error_responses(*statuses: int, codes: dict[int, tuple[str, ...]] | None = None) -> dict[int, OpenApiResponse]:
    """`responses=` entries for these error statuses, each listing its possible codes."""
    codes = codes or {}
    return {
        status: OpenApiResponse(
            ErrorSerializer,
            description=f"{_WHAT.get(status, 'Error')}. `error.code`: "
                        + ", ".join(f"`{c}`" for c in codes.get(status, ERROR_CODES.get(status, ()))),
        )
        for status in statuses
    }


JOB_ID = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The job's id.")
MODEL = OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH, description="A model's name.")
VERSION = OpenApiParameter("version", OpenApiTypes.STR, OpenApiParameter.QUERY,
                           description="Model version (default: the latest).")
PREFER = OpenApiParameter(
    "Prefer", OpenApiTypes.STR, OpenApiParameter.HEADER,
    description="`wait=N` (seconds, at most 60): hold the request until the job ends, up to N s. Answers "
                "`200` with the result if it ended in time (with `Preference-Applied: wait=N`), else `202`.",
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
    description="Any unique string (a UUID). Repeating a submission with the same key returns the same job "
                "(with `Idempotent-Replayed: true`) and never creates a second one; the same key with a different "
                "input or model is a `409 idempotency_key_reused`.",
)
BATCH_WAIT = OpenApiParameter(
    "wait", OpenApiTypes.NUMBER, OpenApiParameter.QUERY,
    description="Seconds (0–60) to hold the request until none of the batch's jobs is queued or running; it "
                "answers within milliseconds of the last one's end, or with the counts as they are when N seconds "
                "pass. Then `GET /v1/jobs?batch={id}&limit=1000` pages through every result.",
)
WAIT = OpenApiParameter(
    "wait", OpenApiTypes.NUMBER, OpenApiParameter.QUERY,
    description="Seconds (0–60) to hold the request until the job ends; it answers within milliseconds of the "
                "end, or with the job as it is when N seconds pass.",
)
SUBMIT_HEADERS = [
    OpenApiParameter("Location", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 202],
                     description="The job's URL, `/v1/jobs/{id}`."),
    OpenApiParameter("Retry-After", OpenApiTypes.INT, OpenApiParameter.HEADER, response=[202, 429, 503],
                     description="Seconds before polling (202) or retrying (429, 503)."),
    OpenApiParameter("Preference-Applied", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 202],
                     description="`wait=N` when `Prefer: wait=N` was honoured."),
    OpenApiParameter("Idempotent-Replayed", OpenApiTypes.STR, OpenApiParameter.HEADER, response=[200, 202],
                     description="`true` when the job is the one an earlier request with this Idempotency-Key made."),
]


class JobInputJsonSerializer(serializers.Serializer):
    b64 = serializers.CharField(required=False, help_text="The input's bytes, base64 (any model).")
    content_type = serializers.CharField(required=False, help_text="The bytes' type, with `b64`.")
    data = serializers.JSONField(required=False, help_text="A nested list of numbers (tensor models).")
    dtype = serializers.CharField(required=False, help_text="float32 (default), float64, float16, int64, int32, uint8.")
    shape = serializers.ListField(child=serializers.IntegerField(), required=False,
                                  help_text="Reshape `data` to this before checking it.")


class JobCreateJsonSerializer(serializers.Serializer):
    input = JobInputJsonSerializer()


class JobCreateMultipartSerializer(serializers.Serializer):
    input = serializers.FileField(help_text="The input file (image, or .npy for tensor models).")


class JobBulkCreateMultipartSerializer(serializers.Serializer):
    input = serializers.ListField(child=serializers.FileField(), help_text="One file field per input, each named "
                                  "`input` (images, or .npy for tensor models), in the order of the answer's jobs.")


BULK_REQUEST: dict[str, Any] = {"multipart/form-data": JobBulkCreateMultipartSerializer}

SUBMIT_REQUEST: dict[str, Any] = {
    "image/*": OpenApiTypes.BINARY,
    "application/x-npy": OpenApiTypes.BINARY,
    "application/octet-stream": OpenApiTypes.BINARY,
    "multipart/form-data": JobCreateMultipartSerializer,
    "application/json": JobCreateJsonSerializer,
}


class ModelOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    handler = serializers.CharField(help_text="image_classifier, tensor or echo.")
    architecture = serializers.CharField()
    input = serializers.JSONField(help_text="Input spec: image preprocessing, or tensor shape and dtype.")
    labels = serializers.IntegerField(help_text="Number of class labels.")
    top_k = serializers.IntegerField()
    batch_size = serializers.IntegerField()
    batch_delay_ms = serializers.FloatField()
    accuracy = serializers.FloatField(required=False, help_text="Held-out accuracy, when the manifest has it.")
    description = serializers.CharField(required=False)
    versions = serializers.ListField(child=serializers.CharField())
    workers = serializers.ListField(child=serializers.CharField(), allow_null=True,
                                    help_text="Workers online (null when Redis is unreachable).")
    workers_online = serializers.IntegerField(allow_null=True)
    queued = serializers.IntegerField(help_text="Jobs waiting for a worker.")


MODEL_LIST = inline_serializer("ModelList", {"models": ModelOutputSerializer(many=True)})
HEALTH = inline_serializer("Health", {"status": serializers.CharField()})
READY = inline_serializer("Ready", {"status": serializers.CharField(), "checks": serializers.JSONField()})
NOT_READY = inline_serializer("NotReady", {"error": ErrorDetailSerializer(), "checks": serializers.JSONField()})


class FirstRendererNegotiation(DefaultContentNegotiation):
    """Always answer with the view's first renderer: scrapers and foreign clients send odd `Accept` headers."""

    def select_renderer(self, request: Request, renderers: list[BaseRenderer],
                        format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


PAGE_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, OpenApiParameter.QUERY,
                     description="Page size (default 50, at most 1000)."),
    OpenApiParameter("offset", OpenApiTypes.INT, OpenApiParameter.QUERY, description="Jobs to skip."),
]


def _job_page() -> Any:
    from api.serializers import JobOutputSerializer

    return inline_serializer("JobPage", {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": JobOutputSerializer(many=True),
    })


JOB_PAGE = _job_page()


def _job_list() -> Any:
    from api.serializers import JobOutputSerializer

    return inline_serializer("JobList", {"jobs": JobOutputSerializer(many=True)})


JOB_LIST = _job_list()


BATCH = inline_serializer("Batch", {
    "id": serializers.UUIDField(),
    "name": serializers.CharField(),
    "model": serializers.CharField(),
    "created_at": serializers.DateTimeField(),
    "total": serializers.IntegerField(help_text="Jobs in the batch."),
    "counts": serializers.DictField(child=serializers.IntegerField(), help_text="Jobs by status."),
    "jobs": serializers.CharField(help_text="URL listing the batch's jobs."),
})
BATCH_ID = OpenApiParameter("batch_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The batch's id.")
