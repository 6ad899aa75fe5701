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
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

MAX_ENTRIES = 10_000

_lock = threading.Lock()
_known: dict[str, tuple[float, Any, Any]] = {}  # token key -> (expires at, user, token)


def _ttl() -> float:
    return float(settings.INFERQ_TOKEN_CACHE_SECONDS)


def token_cache_clear() -> None:
    with _lock:
        _known.clear()


class CachedTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, as DRF's, with the answer remembered briefly per process."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        ttl = _ttl()
        if ttl <= 0:
            return super().authenticate_credentials(key)
        now = time.monotonic()
        entry = _known.get(key)
        if entry is not None and entry[0] > now:
            # A copy per request: views may annotate request.user, and threads must not share that.
            return copy.copy(entry[1]), entry[2]
        user, token = super().authenticate_credentials(key)
        with _lock:
            if len(_known) >= MAX_ENTRIES:
                for stale in [k for k, v in _known.items() if v[0] <= now] or list(_known)[: MAX_ENTRIES // 10]:
                    _known.pop(stale, None)
            _known[key] = (now + ttl, user, token)
        return copy.copy(user), token


@receiver(post_delete, sender=Token)
def _forget_deleted_token(sender: Any, instance: Token, **kwargs: Any) -> None:
    with _lock:
        _known.pop(instance.key, None)


@receiver(post_save, sender=get_user_model())
def _forget_changed_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    with _lock:
        for key in [k for k, v in _known.items() if v[1].pk == instance.pk]:
            _known.pop(key, None)
