"""Tokens remembered per web process: no token query on a repeat request, revocation still honoured."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

import api.authentication
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db


def token_queries(client: Any, path: str = "/v1/models") -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    return sum("authtoken_token" in q["sql"] for q in queries.captured_queries)


def client_for(token: Token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_a_token_is_read_once_then_remembered(user: Any, store: Any) -> None:
    client = client_for(Token.objects.create(user=user))
    assert token_queries(client) == 1
    assert token_queries(client) == 0
    assert token_queries(client) == 0


def test_remembering_can_be_turned_off(user: Any, store: Any, settings: Any) -> None:
    settings.INFERQ_TOKEN_CACHE_SECONDS = 0
    client = client_for(Token.objects.create(user=user))
    assert token_queries(client) == 1
    assert token_queries(client) == 1


def test_a_remembered_token_is_read_again_after_its_seconds(user: Any, store: Any, settings: Any,
                                                            monkeypatch: Any) -> None:
    settings.INFERQ_TOKEN_CACHE_SECONDS = 5
    now = [1000.0]
    monkeypatch.setattr(api.authentication.time, "monotonic", lambda: now[0])
    client = client_for(Token.objects.create(user=user))
    assert token_queries(client) == 1
    now[0] += 4.9
    assert token_queries(client) == 0
    now[0] += 0.2
    assert token_queries(client) == 1


def test_a_deleted_token_is_refused_at_once(user: Any, store: Any) -> None:
    token = Token.objects.create(user=user)
    client = client_for(token)
    assert client.get("/v1/models").status_code == 200
    token.delete()
    assert_error(client.get("/v1/models"), 401, "authentication_failed")


def test_a_deactivated_user_is_refused_at_once(user: Any, store: Any) -> None:
    client = client_for(Token.objects.create(user=user))
    assert client.get("/v1/models").status_code == 200
    user.is_active = False
    user.save()
    assert_error(client.get("/v1/models"), 401, "authentication_failed")


def test_unknown_tokens_are_not_remembered(db: Any, store: Any) -> None:
    client = APIClient()
    for i in range(3):
        client.credentials(HTTP_AUTHORIZATION=f"Token nosuchtoken{i}")
        assert_error(client.get("/v1/models"), 401, "authentication_failed")
    assert api.authentication._known == {}


def test_each_request_gets_its_own_user_object(user: Any) -> None:
    token = Token.objects.create(user=user)
    auth = api.authentication.CachedTokenAuthentication()
    first, _ = auth.authenticate_credentials(token.key)
    second, _ = auth.authenticate_credentials(token.key)
    assert first.pk == second.pk == user.pk
    assert first is not second
    # Annotating one request's user (or its related-object cache) leaves the remembered one and the next alone.
    first.first_name = "changed"
    first._state.fields_cache["marker"] = object()
    third, _ = auth.authenticate_credentials(token.key)
    assert third.first_name == user.first_name != "changed"
    assert "marker" not in third._state.fields_cache
    assert type(third) is type(user) and not third._state.adding and third._state.db == "default"


@pytest.mark.parametrize(("header", "message"), [
    ("Token", "Invalid token header. No credentials provided."),
    ("Token one two", "Invalid token header. Token string should not contain spaces."),
    ("token {key}", None),  # the keyword is not case-sensitive
    ("Bearer {key}", "Authentication credentials were not provided."),  # another scheme: not a token at all
])
def test_the_authorization_header_is_read_as_drf_reads_it(user: Any, store: Any, header: str,
                                                          message: str | None) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(key=Token.objects.create(user=user).key))
    response = client.get("/v1/models")
    if message is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 401
        assert response.json()["error"]["message"] == message
