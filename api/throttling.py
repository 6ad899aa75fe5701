"""Per-token request limits as DRF throttles, counted in the shared cache (Redis in production).

DRF's stock throttles keep every request's timestamp in one cache entry, read and rewritten
whole on each request: at thousands of requests a minute that is a large value moved twice per
request, and concurrent web processes overwrite each other's lists. These count instead with a
sliding-window counter — two fixed windows, the previous one weighted by how much of it still
overlaps the last `period` seconds — using the cache's atomic `incr`, so every web process on
every machine shares one count per token. A refusal is a `429` with `Retry-After` (through
`api.exceptions`' one error shape).
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """"6000/min" → (6000, 60); None, "", "0" or "off" → None (no limit)."""
    if not rate or rate.strip().lower() in ("0", "off", "none"):
        return None
    count, _, period = rate.strip().partition("/")
    num = int(count)
    if num <= 0:
        return None
    return num, _PERIODS[period.strip()[:1].lower() or "s"]


def count_hit(key: str, *, timeout: int) -> None:
    """Add one to a window's counter: one pipelined round trip on Redis, add-or-incr elsewhere."""
    incr_with_ttl = getattr(cache, "incr_with_ttl", None)
    if incr_with_ttl is not None:
        incr_with_ttl(key, timeout)
        return
    if not cache.add(key, 1, timeout=timeout):
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr: start it again
            cache.set(key, 1, timeout=timeout)


class CacheRateThrottle(BaseThrottle):
    """Sliding-window counter per (scope, user); unauthenticated requests are not counted here."""

    scope = "api"

    def __init__(self) -> None:
        self._wait = 0.0

    def rate(self) -> tuple[int, int] | None:
        return parse_rate(settings.INFERQ_THROTTLE_RATES.get(self.scope))

    def ident_for(self, request: Request) -> str | None:
        user = request.user
        if not (user and user.is_authenticated):
            return None
        if getattr(user, "username", "") == settings.INFERQ_COMPAT_ANONYMOUS_USERNAME:
            # Token-less TorchServe/KServe clients share one user: count them by address instead.
            return f"ip:{self.get_ident(request)}"
        return f"user:{user.pk}"

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = self.rate()
        ident = self.ident_for(request)
        if rate is None or ident is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{ident}:{period}:"
        elapsed = now - window * period
        counts = cache.get_many([key + str(window - 1), key + str(window)])
        previous = counts.get(key + str(window - 1)) or 0
        current = counts.get(key + str(window)) or 0
        weight = 1.0 - elapsed / period
        if previous * weight + current >= limit:
            self._wait = self._seconds_until_allowed(limit, period, previous, current, elapsed)
            return False
        count_hit(key + str(window), timeout=2 * period + 1)
        return True

    @staticmethod
    def _seconds_until_allowed(limit: int, period: int, previous: int, current: int, elapsed: float) -> float:
        if current >= limit or previous <= 0:
            return period - elapsed
        # previous * (1 - (elapsed + t) / period) + current < limit  →  solve for t
        needed = period * (1 - (limit - current) / previous) - elapsed
        return min(max(needed, 0.001), period - elapsed)

    def wait(self) -> float | None:
        return max(1.0, math.ceil(self._wait))


class ApiRateThrottle(CacheRateThrottle):
    """Every authenticated API call (reads, polls, cancels): INFERQ_THROTTLE_API."""

    scope = "api"


class SubmitRateThrottle(CacheRateThrottle):
    """Submissions (and synchronous TorchServe/KServe inferences): INFERQ_THROTTLE_SUBMIT."""

    scope = "submit"
