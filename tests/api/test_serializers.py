"""The fast job_to_dict must say exactly what the documented JobOutputSerializer says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from api.models import Batch, Job, JobStatus
from api.serializers import JobOutputSerializer, job_to_dict

pytestmark = pytest.mark.django_db


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@pytest.mark.parametrize("finished", [False, True])
def test_job_to_dict_equals_the_serializer(user: Any, finished: bool) -> None:
    job = Job.objects.create(owner=user, model_name="m", model_version="2", input_content_type="image/png",
                             input_size=12, input_sha256="ab" * 32)
    if finished:
        batch = Batch.objects.create(owner=user, name="b")
        now = timezone.now()
        Job.objects.filter(id=job.id).update(
            status=JobStatus.FAILED, error_code="invalid_image", error_message="bad", attempts=2, batch=batch,
            started_at=now, finished_at=now, queue_ms=1.5, inference_ms=2.25, total_ms=4.0, batch_size=3,
            worker="w@h", result={"predictions": [{"label": "x", "probability": 0.5}]})
        job.refresh_from_db()

    fast = job_to_dict(job)

    assert as_json(fast) == as_json(JobOutputSerializer(job).data)
    assert fast["status"] == ("failed" if finished else "queued")
