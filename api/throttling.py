"""Per-token request limits as DRF throttles, counted in the shared cache (Redis in production).

DRF's stock throttles keep every request's timestamp in one cache entry, read and rewritten
whole on each request: at thousands of requests a minute that is a large value moved twice per
request, and concurrent web processes overwrite each other's lists. These count instead with a
sliding-window counter — two fixed windows, the previous one weighted by how much of it still
overlaps the last `period` seconds — using the cache's atomic `incr`, so every web process on
every machine shares one count per token.

A round trip per request was a third of a status poll's cost, so for limits of 1000 or more per
period each web process, far below the limit, tallies hits locally and adds them to the shared
count in bulk: every 50 ms, or sooner once it holds a 64th of the limit (at least 16 hits, at most
64). From 80% of the limit on, and before every refusal, the shared count is read and written on
each hit: a limit is exceeded only if the other processes' unsent tallies (each under a 64th of
the limit, or 16 hits) add up to a fifth of it, which takes more than twelve of them. A refused
hit is taken back: refusals do not use up the budget. A refusal is a `429` with `Retry-After`
(through `api.exceptions`' one error shape).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Far below its limit, a process adds its hits to the shared count in bulk: every SYNC_SECONDS, or sooner once it
# holds limit // SYNC_SHARE hits, kept between SYNC_HITS (so a small limit's batches stay small enough to be safe)
# and MAX_SYNC_HITS. From EXACT_FROM of the limit on, every hit is counted at once. Limits under LOCAL_FROM hits per
# period are counted exactly, on every hit. (A large limit's round trips were one per 16 polls, 3% of a poll's CPU.)
SYNC_HITS = 16
MAX_SYNC_HITS = 64
SYNC_SHARE = 64
SYNC_SECONDS = 0.05
EXACT_FROM = 0.8
LOCAL_FROM = 1000


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """"6000/min" → (6000, 60); None, "", "0" or "off" → None (no limit)."""
    if not rate or rate.strip().lower() in ("0", "off", "none"):
        return None
    count, _, period = rate.strip().partition("/")
    num = int(count)
    if num <= 0:
        return None
    return num, _PERIODS[period.strip()[:1].lower() or "s"]


def window_counts(previous_key: str, current_key: str, *, amount: int, timeout: int) -> tuple[int, int]:
    """Add `amount` hits to the current window; (previous window's count, current window's count after it).

    One pipelined round trip on Redis (GET, INCRBY, EXPIRE); get, then add-or-incr, elsewhere.
    """
    hit = getattr(cache, "window_hit", None)
    if hit is not None:
        return hit(previous_key, current_key, timeout, amount)
    previous = cache.get(previous_key) or 0
    if cache.add(current_key, amount, timeout=timeout):
        return previous, amount
    try:
        return previous, cache.incr(current_key, amount)
    except ValueError:  # expired between add and incr: start it again
        cache.set(current_key, amount, timeout=timeout)
        return previous, amount


def sync_hits(limit: int) -> int:
    """How many hits a process tallies locally, far below `limit`, before it adds them to the shared count."""
    return min(MAX_SYNC_HITS, max(SYNC_HITS, limit // SYNC_SHARE))


def uncount_hit(key: str, hits: int = 1) -> None:
    """Take back hits that were refused: a refused request does not use up the budget."""
    try:
        cache.decr(key, hits)
    except ValueError:
        pass  # the window expired meanwhile


@dataclass
class _Tally:
    """One web process's view of one (scope, ident) window: the shared counts as last read, plus the hits
    it let through since and has not yet added to them."""

    window: int
    previous: int = 0
    shared: int = 0
    pending: int = 0
    synced_at: float = -math.inf


_tallies: dict[str, _Tally] = {}
_tallies_lock = threading.Lock()


def throttle_tallies_clear() -> None:
    with _tallies_lock:
        _tallies.clear()


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
        return self.allow_hits(request, 1)

    def allow_hits(self, request: Request, hits: int, *, counted: int = 0) -> bool:
        """Whether `hits` more requests' worth fit under the limit (a bulk submit counts each of its inputs);
        all of them are counted, or none, and then the `counted` hits this request was already allowed are taken
        back too: a refused request does not use up the budget."""
        if hits <= 0:
            return True
        rate = self.rate()
        ident = self.ident_for(request)
        if rate is None or ident is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{ident}:{period}:"
        elapsed = now - window * period
        weight = 1.0 - elapsed / period
        with _tallies_lock:
            tally = _tallies.get(key)
            if tally is None or tally.window != window:
                tally = _tallies[key] = _Tally(window)
            estimate = tally.previous * weight + tally.shared + tally.pending
            clock = time.monotonic()
            if (limit >= LOCAL_FROM and estimate + hits < limit * EXACT_FROM
                    and tally.pending + hits < sync_hits(limit) and clock - tally.synced_at < SYNC_SECONDS):
                tally.pending += hits
                return True
            # Refusals, and every hit near the limit, are decided on the shared count, fresh.
            amount, tally.pending, tally.synced_at = tally.pending + hits, 0, clock
        previous, current = window_counts(key + str(window - 1), key + str(window), amount=amount,
                                          timeout=2 * period + 1)
        with _tallies_lock:
            tally.previous, tally.shared = previous, current
        before = current - hits
        if previous * weight + before + hits - 1 >= limit:  # the last of the hits would be over the limit
            uncount_hit(key + str(window), hits + counted)
            with _tallies_lock:
                tally.shared -= hits + counted
            self._wait = self._seconds_until_allowed(limit, period, previous, before, elapsed)
            return False
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
