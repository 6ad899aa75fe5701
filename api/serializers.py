"""Plain output serializers for jobs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from api.models import Job


class JobOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    model = serializers.CharField(source="model_name")
    version = serializers.CharField(source="model_version")
    status = serializers.CharField()
    result = serializers.JSONField()
    error = serializers.SerializerMethodField()
    cached = serializers.BooleanField()
    attempts = serializers.IntegerField()
    input = serializers.SerializerMethodField()
    batch = serializers.UUIDField(source="batch_id", allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()
    timings = serializers.SerializerMethodField()
    worker = serializers.CharField()
    url = serializers.SerializerMethodField()

    def get_error(self, job: Job) -> dict[str, str] | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    def get_input(self, job: Job) -> dict[str, Any]:
        return {"content_type": job.input_content_type, "size": job.input_size, "sha256": job.input_sha256}

    def get_timings(self, job: Job) -> dict[str, float | None]:
        return {"queue_ms": job.queue_ms, "inference_ms": job.inference_ms, "total_ms": job.total_ms,
                "batch_size": job.batch_size}

    def get_url(self, job: Job) -> str:
        return f"/v1/jobs/{job.id}"


def _iso(value: Any) -> str | None:
    """DRF's DateTimeField output: ISO 8601 with a `Z` for UTC."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def job_to_dict(job: Job) -> dict[str, Any]:
    """JobOutputSerializer's output, built directly: jobs are answered on every submit and poll,
    and DRF's field machinery costs more than the rest of a poll. A test keeps the two identical."""
    return {
        "id": str(job.id),
        "model": job.model_name,
        "version": job.model_version,
        "status": job.status,
        "result": job.result,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "cached": job.cached,
        "attempts": job.attempts,
        "input": {"content_type": job.input_content_type, "size": job.input_size, "sha256": job.input_sha256},
        "batch": str(job.batch_id) if job.batch_id else None,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "timings": {"queue_ms": job.queue_ms, "inference_ms": job.inference_ms, "total_ms": job.total_ms,
                    "batch_size": job.batch_size},
        "worker": job.worker,
        "url": f"/v1/jobs/{job.id}",
    }


class JobListFilterSerializer(serializers.Serializer):
    id = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False,
                               help_text="Only these jobs: `id=…&id=…` or `id=…,…`, at most 250")
    status = serializers.CharField(required=False)
    model = serializers.CharField(required=False)
    batch = serializers.CharField(required=False)


class BatchCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    model = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
