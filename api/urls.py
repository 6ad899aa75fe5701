"""URL routes of the v1 API.

Django tries routes in order and each `include()` is one more resolver level, so the routes every
client hits over and over (a job's status, a submit) come first, and the compatibility routes are
listed here rather than included. No two routes match the same path, so the order changes nothing else.
"""

from django.urls import path

from api import views
from api.compat.urls import urlpatterns as compat_urlpatterns
from api.views_metrics import MetricsApi

urlpatterns = [
    path("v1/jobs/<str:job_id>", views.JobDetailApi.as_view(), name="job-detail"),
    path("v1/models/<str:model>/jobs", views.JobCreateApi.as_view(), name="job-create"),
    path("v1/models/<str:model>/jobs/bulk", views.JobBulkCreateApi.as_view(), name="job-bulk-create"),
    path("v1/models", views.ModelListApi.as_view(), name="model-list"),
    path("v1/models/<str:model>", views.ModelDetailApi.as_view(), name="model-detail"),
    path("v1/jobs", views.JobListApi.as_view(), name="job-list"),
    path("v1/jobs/<str:job_id>/cancel", views.JobCancelApi.as_view(), name="job-cancel"),
    path("v1/batches", views.BatchCreateApi.as_view(), name="batch-create"),
    path("v1/batches/<str:batch_id>", views.BatchDetailApi.as_view(), name="batch-detail"),
    path("healthz", views.HealthzApi.as_view(), name="healthz"),
    path("readyz", views.ReadyzApi.as_view(), name="readyz"),
    path("metrics", MetricsApi.as_view(), name="metrics"),
    *compat_urlpatterns,
]
