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


class JobListFilterSerializer(serializers.Serializer):
    status = serializers.CharField(required=False)
    model = serializers.CharField(required=False)
    batch = serializers.CharField(required=False)


class BatchCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    model = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
