"""One error shape everywhere: unknown URLs, wrong methods, and exceptions nobody handled."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from project.urls import urlpatterns as project_urlpatterns
from tests.api.helpers import assert_error

SECRET = "secret-internal-detail-/srv/app/models.py"


class BoomApi(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET)


def boom_view(request: HttpRequest) -> HttpResponse:
    raise KeyError(SECRET)


def database_down_view(request: HttpRequest) -> HttpResponse:
    raise OperationalError(f"could not connect to server: {SECRET}")


# This module doubles as a test-only URLconf: the project's routes plus views that fail.
urlpatterns = [
    *project_urlpatterns,
    path("test-boom/drf", BoomApi.as_view()),
    path("test-boom/django", boom_view),
    path("test-boom/database", database_down_view),
]
handler404 = "api.middleware.json_404"
handler500 = "api.middleware.json_500"


@pytest.fixture
def boom_urls(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False


@pytest.mark.parametrize("url", ["/nowhere", "/v1/nothing/here", "/v2/jobs"])
def test_unknown_url_is_json_404(client: Any, url: str, db: Any) -> None:
    response = client.get(url)
    assert_error(response, 404, "not_found")
    assert b"<html" not in response.content.lower()


@pytest.mark.parametrize("url", ["/test-boom/drf", "/test-boom/django"])
def test_unhandled_exception_is_500_without_traceback(client: Any, boom_urls: None, url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.get(url)

    assert_error(response, 500, "internal_error")
    assert SECRET.encode() not in response.content
    assert b"Traceback" not in response.content
    # The traceback goes to the log, where operators look for it.
    logged = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert logged


def test_database_error_is_503_with_retry_after(client: Any, boom_urls: None) -> None:
    response = client.get("/test-boom/database")
    assert_error(response, 503, "database_unavailable")
    assert int(response["Retry-After"]) > 0
    assert SECRET.encode() not in response.content


def test_wrong_method_is_405_in_the_error_shape(api_client: Any) -> None:
    response = api_client.delete("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(("name", "status", "code"), [("json_400", 400, "bad_request"),
                                                    ("json_403", 403, "permission_denied"),
                                                    ("json_404", 404, "not_found")])
def test_django_error_handlers_answer_in_the_error_shape(rf: Any, name: str, status: int, code: str) -> None:
    from api import middleware

    response = getattr(middleware, name)(rf.get("/"), Exception(SECRET))
    assert_error(response, status, code)
    assert SECRET.encode() not in response.content


def test_project_urls_name_the_json_handlers() -> None:
    import project.urls

    for status in (400, 403, 404, 500):
        assert getattr(project.urls, f"handler{status}") == f"api.middleware.json_{status}"
