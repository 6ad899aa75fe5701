"""api.apiview.ApiView: the headers DRF adds to every answer, worked out once per view class, are DRF's."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.views import APIView

from api import views

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("view", [views.JobDetailApi, views.JobCreateApi, views.BatchCreateApi, views.HealthzApi])
def test_each_view_class_answers_drfs_own_default_headers(view: type[Any]) -> None:
    ours = view()
    drfs = APIView.default_response_headers.fget(ours)  # type: ignore[attr-defined]
    assert ours.default_response_headers == drfs
    # A fresh dict each time: DRF's finalize_response pops Vary from it.
    ours.default_response_headers.clear()
    assert ours.default_response_headers == drfs


def test_answers_carry_their_own_views_allow_header(api_client: Any, make_job: Any) -> None:
    job = make_job()
    for _ in range(2):  # the second time from what the first worked out
        assert api_client.get(f"/v1/jobs/{job.id}")["Allow"] == "GET, HEAD, OPTIONS"
        assert api_client.get("/healthz")["Allow"] == "GET, HEAD, OPTIONS"
        assert api_client.get(f"/v1/jobs/{job.id}/cancel")["Allow"] == "POST, OPTIONS"
