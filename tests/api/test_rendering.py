"""api.views.rendered: the bytes and headers DRF's Response would answer, on the fast path and off it."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory

from api import views

DATA = [
    {"id": "3f0c", "result": {"predictions": [{"index": 3, "probability": 0.25}]}, "timings": {"queue_ms": None}},
    {"text": "naïve \u2028 line \u2029 para", "emoji": "🙂", "nested": [1, 2.5, True, None]},
    [],
    "plain",
]


def drf_answer(request: Request, data: Any) -> HttpResponse:
    response = Response(data)
    response.accepted_renderer = request.accepted_renderer
    response.accepted_media_type = request.accepted_media_type
    response.renderer_context = {"request": request}
    return response.render()


def negotiated(accept: str | None, renderer: Any = None) -> Request:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get("/v1/jobs", **headers))
    request.accepted_renderer = renderer or JSONRenderer()
    request.accepted_media_type = accept if accept and accept != "*/*" else request.accepted_renderer.media_type
    return request


class LongJSON(JSONRenderer):
    compact = False
    ensure_ascii = True


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize(("accept", "renderer"), [
    (None, None), ("application/json", None), ("application/json; indent=4", None),
    ("application/json", LongJSON()), ("application/json; indent=2", LongJSON()),
])
def test_the_same_bytes_and_headers_as_drfs_response(data: Any, accept: str | None, renderer: Any) -> None:
    request = negotiated(accept, renderer)
    ours, drfs = views.rendered(request, data), drf_answer(request, data)
    assert ours.content == drfs.content
    assert ours["Content-Type"] == drfs["Content-Type"]


def test_the_plain_path_refuses_what_drf_refuses() -> None:
    request = negotiated("application/json")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        views.rendered(request, {"x": float("nan")})


def test_plain_json_is_encoded_without_drfs_per_call_render(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = views.rendered(negotiated("application/json"), DATA[0]).content

    def not_called(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("JSONRenderer.render ran for plain application/json")

    monkeypatch.setattr(JSONRenderer, "render", not_called)
    assert views.rendered(negotiated("application/json"), DATA[0]).content == expected
    with pytest.raises(AssertionError):  # an indent parameter still goes through DRF
        views.rendered(negotiated("application/json; indent=4"), DATA[0])
