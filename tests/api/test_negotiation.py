"""The fast content negotiation chooses exactly what DRF's own would, and still refuses with 406."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer, StaticHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from api.negotiation import FastContentNegotiation

ACCEPTS = [None, "*/*", "application/json", "application/json; indent=4", "text/html", "text/html, */*;q=0.1",
           "application/*", "application/json, text/html", "text/plain", "image/png", ""]
RENDERER_LISTS = [[JSONRenderer()], [JSONRenderer(), BrowsableAPIRenderer()], [StaticHTMLRenderer(), JSONRenderer()]]


def request(accept: str | None, query: str = "") -> Request:
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    return Request(APIRequestFactory().get(f"/v1/jobs{query}", **headers))


def choice(negotiation: Any, req: Request, renderers: list[Any]) -> tuple[str, str] | str:
    try:
        renderer, media_type = negotiation.select_renderer(req, renderers)
    except NotAcceptable:
        return "406"
    return type(renderer).__name__, media_type


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("renderers", RENDERER_LISTS, ids=["json", "json+browsable", "html+json"])
@pytest.mark.parametrize("query", ["", "?format=json", "?format=api", "?wait=5"])
def test_it_chooses_what_drf_chooses(accept: str | None, renderers: list[Any], query: str) -> None:
    try:
        expected = choice(DefaultContentNegotiation(), request(accept, query), renderers)
    except Exception as exc:  # noqa: BLE001 - DRF answers 404 for an unknown ?format=
        with pytest.raises(type(exc)):
            choice(FastContentNegotiation(), request(accept, query), renderers)
        return
    assert choice(FastContentNegotiation(), request(accept, query), renderers) == expected


def test_the_api_uses_it_and_still_answers_406(api_client: Any) -> None:
    from django.conf import settings

    assert settings.REST_FRAMEWORK["DEFAULT_CONTENT_NEGOTIATION_CLASS"] == "api.negotiation.FastContentNegotiation"
    response = api_client.get("/v1/jobs", HTTP_ACCEPT="text/html")
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
