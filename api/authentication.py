"""API tokens, remembered by each web process for a few seconds so a poll does not cost a token query.

DRF's TokenAuthentication reads the token and its user on every request: on the status-poll path
that query cost more than reading the job itself. A token that authenticated is kept in process
memory for INFERQ_TOKEN_CACHE_SECONDS (0 turns it off). Deleting a token or deactivating a user
takes effect at once in the process that did it and within that many seconds everywhere else;
unknown tokens are never remembered, so guessing costs a query each and fills no memory.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.request import Request

MAX_ENTRIES = 10_000

_lock = threading.Lock()
_known: dict[str, tuple[float, Any, Any]] = {}  # token key -> (expires at, user, token)


def _ttl() -> float:
    return float(settings.INFERQ_TOKEN_CACHE_SECONDS)


def token_cache_clear() -> None:
    with _lock:
        _known.clear()


class _AuthorizationOnly:
    """What DRF's `TokenAuthentication.authenticate` reads of a request: its Authorization header."""

    __slots__ = ("headers",)

    def __init__(self, value: str | bytes) -> None:
        self.headers = {"authorization": value}


def _user_copy(user: Any) -> Any:
    """A shallow copy of a remembered user, as `copy.copy` makes it, built directly: `copy.copy` of a model
    instance goes through `__reduce_ex__` and `__getstate__`, 3% of a status poll."""
    if not isinstance(user, Model):
        return copy.copy(user)
    clone = object.__new__(type(user))
    state = user.__dict__.copy()
    state["_state"] = copy.copy(state["_state"])
    state["_state"].fields_cache = state["_state"].fields_cache.copy()
    clone.__dict__ = state
    return clone


class CachedTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, as DRF's, with the answer remembered briefly per process."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        # DRF reads the header as `request.headers["authorization"]`, which builds a dict of every header (5% of
        # a status poll); the one header it needs is handed over from META, and DRF's own checks and messages run.
        header = request.META.get("HTTP_AUTHORIZATION", b"")
        result: tuple[Any, Any] | None = super().authenticate(cast(Request, _AuthorizationOnly(header)))
        return result

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        ttl = _ttl()
        if ttl <= 0:
            return super().authenticate_credentials(key)
        now = time.monotonic()
        entry = _known.get(key)
        if entry is not None and entry[0] > now:
            # A copy per request: views may annotate request.user, and threads must not share that.
            return _user_copy(entry[1]), entry[2]
        user, token = super().authenticate_credentials(key)
        with _lock:
            if len(_known) >= MAX_ENTRIES:
                for stale in [k for k, v in _known.items() if v[0] <= now] or list(_known)[: MAX_ENTRIES // 10]:
                    _known.pop(stale, None)
            _known[key] = (now + ttl, user, token)
        return _user_copy(user), token


@receiver(post_delete, sender=Token)
def _forget_deleted_token(sender: Any, instance: Token, **kwargs: Any) -> None:
    with _lock:
        _known.pop(instance.key, None)


@receiver(post_save, sender=get_user_model())
def _forget_changed_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    with _lock:
        for key in [k for k, v in _known.items() if v[1].pk == instance.pk]:
            _known.pop(key, None)
