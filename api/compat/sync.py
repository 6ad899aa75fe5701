"""Run jobs synchronously for the compatibility endpoints: submit through the queue, wait on events.

The jobs are ordinary jobs (listed under `/v1/jobs`, cached, batched, counted in /metrics); the
request only holds a wait slot while they run. A job still unfinished when the wait runs out is
canceled, since no one will ever collect its result.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from api.events import clamp_wait, jobs_wait_held, wait_slot
from api.exceptions import GatewayTimeout, ServiceUnavailable
from api.inputs import ModelInput
from api.models import Job
from api.services import job_cancel, job_create
from workers.store import ModelSpec


def jobs_run_sync(*, owner: AbstractBaseUser, spec: ModelSpec, inputs: list[ModelInput]) -> list[Job]:
    """One job per input, all ended, in order; 503 when no wait slot is free, 504 when they take too long."""
    with wait_slot() as held:
        if not held:
            raise ServiceUnavailable("This server is holding as many waiting requests as it may; retry shortly.",
                                     code="wait_slots_full", retry_after=1)
        jobs = [job_create(owner=owner, spec=spec, model_input=item) for item in inputs]
        jobs = jobs_wait_held(jobs=jobs, timeout=clamp_wait(settings.INFERQ_COMPAT_TIMEOUT))
    unfinished = [job for job in jobs if not job.is_final]
    if unfinished:
        for job in unfinished:
            job_cancel(job=job)
        raise GatewayTimeout(f"The inference did not end within {settings.INFERQ_COMPAT_TIMEOUT} s; "
                             f"job {unfinished[0].id} was canceled.")
    return jobs
