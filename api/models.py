"""The Job row (the source of truth for every inference job) and the Batch that groups jobs."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def input_upload_to(job: Job, filename: str) -> str:
    return f"inputs/{job.created_at:%Y/%m/%d}/{job.id}"


class Batch(models.Model):
    """A group of jobs submitted together (for example by `manage.py submit_bulk`)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches")
    name = models.CharField(max_length=200, blank=True)
    model_name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return self.name or str(self.id)


class JobQuerySet(models.QuerySet["Job"]):
    def with_input(self) -> JobQuerySet:
        """Rows with `input_data` loaded (a worker about to run them); other reads leave it deferred."""
        return self.defer(None)


class JobManager(models.Manager.from_queryset(JobQuerySet)):  # type: ignore[misc]
    """Job rows without their inline input: polls, lists and the admin never need the bytes."""

    def get_queryset(self) -> JobQuerySet:
        return super().get_queryset().defer("input_data")


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: job_owner_created leads with it (one index fewer to write on every submit).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs",
                              db_index=False)
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=50)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)

    input = models.FileField(upload_to=input_upload_to, max_length=255, blank=True)
    # A small input (at most INFERQ_INLINE_INPUT_BYTES) is kept here instead of in `input`, until the job ends.
    input_data = models.BinaryField(null=True, blank=True, editable=False)
    input_content_type = models.CharField(max_length=100)
    input_size = models.PositiveBigIntegerField(default=0)
    input_sha256 = models.CharField(max_length=64)

    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    cached = models.BooleanField(default=False)

    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    queue_ms = models.FloatField(null=True, blank=True)
    inference_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    batch_size = models.PositiveIntegerField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # A running job belongs to its worker until this time; the worker renews it while it works.
    # A job whose lease ran out (its worker died) is claimed again by its message or the sweeper.
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    # Indexed only where set (job_batch): most jobs belong to no batch, and their submits skip that index write.
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs",
                              db_index=False)
    # NULL, not "": jobs without a key must not collide in the (owner, key) unique constraint.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001

    objects = JobManager()

    # Not a column: set by `job_start` on the job it claims (whether more first attempts of its model
    # version were queued then; None when it did not ask), so the runner knows whether to gather a batch.
    others_queued: bool | None = None

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            # Every read by status: the queue bound's count (status, model), a worker's claim of the oldest
            # queued jobs of one version (status, model, version, oldest first), the sweeper's running jobs,
            # recovery and retention. One index where there were two ((status, model) and (model, version,
            # status, created)): every submit writes it, every claim and finish moves the job within it.
            models.Index(fields=["status", "model_name", "model_version", "created_at"], name="job_queue"),
            # The result cache looks up succeeded jobs only (api/cache.py), so only they are in it: a submit,
            # which inserts a queued job, does not write it; the finish that makes a job succeeded does.
            models.Index(fields=["model_name", "model_version", "input_sha256"], name="job_cache_key",
                         condition=models.Q(status=JobStatus.SUCCEEDED)),
            models.Index(fields=["batch"], name="job_batch", condition=models.Q(batch__isnull=False)),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="job_unique_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.model_name}:{self.model_version} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
