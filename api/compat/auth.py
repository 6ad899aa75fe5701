"""Who a TorchServe or KServe client is: `Token`/`Bearer` API tokens, or one shared user when allowed.

TorchServe (since 0.11) sends `Authorization: Bearer <key>`; tritonclient sends whatever headers
it is given. Both schemes take an InferQ API token. With INFERQ_COMPAT_ALLOW_ANONYMOUS on, a
request with no `Authorization` header at all runs as one shared user, so a client that never
learnt about tokens works unchanged (throttled per address rather than per token).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from api.authentication import CachedTokenAuthentication


class BearerTokenAuthentication(CachedTokenAuthentication):
    """`Authorization: Bearer <InferQ token>` (TorchServe's token header)."""

    keyword = "Bearer"


class CompatAnonymousAuthentication(BaseAuthentication):
    """No `Authorization` header and INFERQ_COMPAT_ALLOW_ANONYMOUS on: the shared compat user."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        if not settings.INFERQ_COMPAT_ALLOW_ANONYMOUS or request.META.get("HTTP_AUTHORIZATION"):
            return None
        return compat_anonymous_user(), None


def compat_anonymous_user() -> Any:
    user, created = get_user_model().objects.get_or_create(username=settings.INFERQ_COMPAT_ANONYMOUS_USERNAME)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


COMPAT_AUTHENTICATION = [BearerTokenAuthentication, CachedTokenAuthentication, CompatAnonymousAuthentication]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """OpenAPI: `Authorization: Bearer <token>`."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "An InferQ API token (TorchServe's header)."}


class CompatAnonymousScheme(OpenApiAuthenticationExtension):
    """OpenAPI: no credentials at all (when INFERQ_COMPAT_ALLOW_ANONYMOUS is on)."""

    target_class = CompatAnonymousAuthentication
    name: list[str] = []

    def get_security_requirement(self, auto_schema: Any) -> dict[str, Any]:
        return {}

    def get_security_definition(self, auto_schema: Any) -> list[Any]:  # type: ignore[override]
        return []
