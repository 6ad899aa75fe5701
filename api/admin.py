"""Django admin: list, filter and search jobs and batches."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from api.models import Batch, Job, JobStatus


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "model_name", "model_version", "status", "error_code", "attempts",
                    "created_at", "queue_ms", "inference_ms", "total_ms", "worker")
    list_filter = ("status", "model_name", "error_code", "cached", "created_at")
    search_fields = ("id", "input_sha256", "worker", "owner__username", "idempotency_key")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Job._meta.fields]
    list_select_related = ("owner",)
    show_full_result_count = False


def _status_column(status: str) -> Any:
    @admin.display(description=status, ordering=f"n_{status}")
    def column(self: admin.ModelAdmin, obj: Batch) -> int:
        return int(getattr(obj, f"n_{status}", 0))

    return column


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "model_name", "created_at", "job_count", *JobStatus.values, "jobs_link")
    search_fields = ("id", "name")
    list_select_related = ("owner",)
    readonly_fields = ("id", "created_at", "status_counts", "jobs_link")

    queued = _status_column(JobStatus.QUEUED)
    running = _status_column(JobStatus.RUNNING)
    succeeded = _status_column(JobStatus.SUCCEEDED)
    failed = _status_column(JobStatus.FAILED)
    canceled = _status_column(JobStatus.CANCELED)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        # One grouped query for the page: a conditional count per status.
        counts = {f"n_{s}": Count("jobs", filter=Q(jobs__status=s)) for s in JobStatus.values}
        return super().get_queryset(request).annotate(job_count=Count("jobs"), **counts)

    @admin.display(ordering="job_count")
    def job_count(self, obj: Batch) -> int:
        return obj.job_count  # type: ignore[attr-defined]

    @admin.display(description="jobs by status")
    def status_counts(self, obj: Batch) -> str:
        return ", ".join(f"{s} {getattr(obj, f'n_{s}', 0)}" for s in JobStatus.values)

    @admin.display(description="jobs")
    def jobs_link(self, obj: Batch) -> str:
        return format_html('<a href="{}?batch={}">jobs</a>', reverse("admin:api_job_changelist"), obj.id)
