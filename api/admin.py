"""Django admin: list, filter and search jobs and batches."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from api.models import Batch, Job


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


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "model_name", "created_at", "job_count")
    search_fields = ("id", "name")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        return super().get_queryset(request).annotate(job_count=Count("jobs"))

    @admin.display(ordering="job_count")
    def job_count(self, obj: Batch) -> int:
        return obj.job_count  # type: ignore[attr-defined]
