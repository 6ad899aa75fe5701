"""api.renderers.JSONRenderer writes DRF's bytes; api.views.rendered answers what DRF's Response would."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpResponse
from rest_framework import renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory

from api import views
from api.renderers import JSONRenderer

DATA = [
    {"id": "3f0c", "result": {"predictions": [{"index": 3, "probability": 0.25}]}, "timings": {"queue_ms": None}},
    {"text": "naïve \u2028 line \u2029 para", "emoji": "🙂", "nested": [1, 2.5, True, None]},
    [],
    "plain",
    None,
]
ACCEPTED = [None, "application/json", "application/json; indent=4", "application/json; indent=0"]
CONTEXTS = [None, {}, {"indent": 2}, {"indent": 0}]


class LongJSON(JSONRenderer):
    compact = False
    ensure_ascii = True


class DrfLongJSON(renderers.JSONRenderer):
    compact = False
    ensure_ascii = True


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("accepted", ACCEPTED)
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize(("ours", "drfs"), [(JSONRenderer, renderers.JSONRenderer), (LongJSON, DrfLongJSON)],
                         ids=["compact", "long-ascii"])
def test_the_same_bytes_as_drfs_renderer(data: Any, accepted: str | None, context: dict[str, Any] | None,
                                         ours: type[Any], drfs: type[Any]) -> None:
    assert ours().render(data, accepted, context) == drfs().render(data, accepted, context)


def test_plain_json_is_encoded_without_drfs_per_call_render(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = renderers.JSONRenderer().render(DATA[0], "application/json")

    def not_called(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("DRF's JSONRenderer.render ran for plain application/json")

    monkeypatch.setattr(renderers.JSONRenderer, "render", not_called)
    assert JSONRenderer().render(DATA[0], "application/json", {"request": None}) == expected
    assert JSONRenderer().render(DATA[0]) == expected
    with pytest.raises(AssertionError):  # an indent still goes through DRF
        JSONRenderer().render(DATA[0], "application/json; indent=4")
    with pytest.raises(AssertionError):
        JSONRenderer().render(DATA[0], "application/json", {"indent": 2})


def test_the_plain_path_refuses_what_drf_refuses() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        JSONRenderer().render({"x": float("nan")}, "application/json")


def test_the_api_renders_with_it() -> None:
    from django.conf import settings

    assert settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] == ["api.renderers.JSONRenderer"]


def drf_answer(request: Request, data: Any) -> HttpResponse:
    response = Response(data)
    response.accepted_renderer = request.accepted_renderer
    response.accepted_media_type = request.accepted_media_type
    response.renderer_context = {"request": request}
    return response.render()


@pytest.mark.parametrize("data", DATA[:4])
@pytest.mark.parametrize("accept", [None, "application/json", "application/json; indent=4"])
def test_rendered_answers_what_drfs_response_would(data: Any, accept: str | None) -> None:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get("/v1/jobs", **headers))
    request.accepted_renderer = JSONRenderer()
    request.accepted_media_type = accept or JSONRenderer.media_type
    ours, drfs = views.rendered(request, data), drf_answer(request, data)
    assert ours.content == drfs.content
    assert ours["Content-Type"] == drfs["Content-Type"]
