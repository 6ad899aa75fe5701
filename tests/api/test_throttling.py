"""Per-token throttles in the shared cache: 429 with Retry-After in the one error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient, APIRequestFactory

from api.throttling import CacheRateThrottle, parse_rate
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db

ECHO_URL = "/v1/models/echo/jobs"


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def submit(client: Any, data: bytes) -> Any:
    return client.post(ECHO_URL, data=data, content_type="application/octet-stream")


@pytest.mark.parametrize("rate, expected", [
    ("6000/min", (6000, 60)), ("10/s", (10, 1)), ("5/hour", (5, 3600)), ("1/day", (1, 86400)),
    ("", None), ("0", None), ("off", None), (None, None), ("0/min", None),
])
def test_rates_are_parsed_like_drf(rate: str | None, expected: Any) -> None:
    assert parse_rate(rate) == expected


def test_submissions_past_the_rate_are_429_with_retry_after(api_client: Any, echo_model: Path,
                                                            settings: Any) -> None:
    settings.INFERQ_THROTTLE_RATES = {"submit": "2/min", "api": ""}
    assert submit(api_client, b"1").status_code == 202
    assert submit(api_client, b"2").status_code == 202

    refused = submit(api_client, b"3")

    assert_error(refused, 429, "throttled")
    assert 1 <= int(refused["Retry-After"]) <= 60


def test_each_token_has_its_own_budget(api_client: Any, echo_model: Path, other_user: Any, settings: Any) -> None:
    settings.INFERQ_THROTTLE_RATES = {"submit": "1/min", "api": ""}
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other_user).key}")
    assert submit(api_client, b"mine").status_code == 202
    assert submit(other, b"theirs").status_code == 202
    assert submit(api_client, b"mine again").status_code == 429


def test_reads_have_their_own_rate(api_client: Any, make_job: Any, settings: Any) -> None:
    settings.INFERQ_THROTTLE_RATES = {"submit": "", "api": "3/min"}
    job = make_job(b"x")
    for _ in range(3):
        assert api_client.get(f"/v1/jobs/{job.id}").status_code == 200
    assert_error(api_client.get("/v1/jobs"), 429, "throttled")


def test_health_checks_and_metrics_are_never_throttled(api_client: Any, settings: Any, fake_redis: Any) -> None:
    settings.INFERQ_THROTTLE_RATES = {"submit": "1/min", "api": "1/min"}
    for _ in range(3):
        assert APIClient().get("/healthz").status_code == 200
        assert APIClient().get("/metrics").status_code == 200


def test_an_empty_rate_turns_throttling_off(api_client: Any, echo_model: Path, settings: Any) -> None:
    settings.INFERQ_THROTTLE_RATES = {"submit": "", "api": ""}
    assert all(submit(api_client, bytes([i])).status_code == 202 for i in range(5))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("backend", ["locmem", "redis"])
def test_the_window_slides_rather_than_resetting(user: Any, settings: Any, monkeypatch: Any, backend: str) -> None:
    """Just after a window turns over, most of the previous window's requests still count; refusals do not.

    Both counting paths: Django's generic cache API, and the one-round-trip pipeline on Redis.
    """
    import api.throttling

    if backend == "redis":
        from tests.api.test_redis_cache import make_cache

        monkeypatch.setattr(api.throttling, "cache", make_cache()[0])
    settings.INFERQ_THROTTLE_RATES = {"api": "10/min"}
    clock = Clock(60_000.0 * 60 + 30)  # halfway through a minute window
    monkeypatch.setattr(api.throttling.time, "time", clock)
    request = APIRequestFactory().get("/")
    request.user = user
    throttle = CacheRateThrottle()

    assert all(throttle.allow_request(request, None) for _ in range(10))
    assert not throttle.allow_request(request, None)

    clock.now += 40  # 10 s into the next window: the previous 10 weigh 10 * 50/60 ≈ 8.3, so 2 more fit
    allowed = sum(throttle.allow_request(request, None) for _ in range(5))
    assert allowed == 2
    assert 1 <= throttle.wait() <= 60

    clock.now += 60  # the old window has slid out entirely
    assert throttle.allow_request(request, None)


@pytest.fixture
def counted_syncs(monkeypatch: Any) -> list[int]:
    """The shared count's round trips: each entry is how many hits one of them carried. The clock stands still."""
    import api.throttling

    amounts: list[int] = []
    real = api.throttling.window_counts

    def spy(*args: Any, amount: int, **kwargs: Any) -> Any:
        amounts.append(amount)
        return real(*args, amount=amount, **kwargs)

    monkeypatch.setattr(api.throttling, "window_counts", spy)
    monkeypatch.setattr(api.throttling.time, "monotonic", lambda: 500.0)
    monkeypatch.setattr(api.throttling.time, "time", lambda: 3600.0 * 1000 + 1)  # the start of a window
    return amounts


def poll_request(user: Any) -> Any:
    request = APIRequestFactory().get("/")
    request.user = user
    return request


@pytest.mark.parametrize(("rate", "per_trip"), [("1000/min", 16), ("2048/min", 32), ("30000/min", 64),
                                               ("10000000/min", 64)])
def test_far_below_a_large_limit_hits_are_sent_in_bulk(user: Any, settings: Any, counted_syncs: list[int],
                                                       rate: str, per_trip: int) -> None:
    """A 64th of the limit per round trip, at least 16 hits and at most 64."""
    settings.INFERQ_THROTTLE_RATES = {"api": rate}
    request, throttle = poll_request(user), CacheRateThrottle()

    assert all(throttle.allow_request(request, None) for _ in range(1 + 5 * per_trip))

    assert counted_syncs == [1] + [per_trip] * 5  # the first hit, then one round trip per batch: every hit counted


def test_a_small_limit_is_counted_on_every_hit(user: Any, settings: Any, counted_syncs: list[int]) -> None:
    settings.INFERQ_THROTTLE_RATES = {"api": "100/min"}
    request, throttle = poll_request(user), CacheRateThrottle()
    assert all(throttle.allow_request(request, None) for _ in range(20))
    assert counted_syncs == [1] * 20


@pytest.mark.parametrize("limit", [1000, 6000])
def test_processes_tallying_apart_still_stop_at_the_limit(user: Any, settings: Any, counted_syncs: list[int],
                                                          monkeypatch: Any, limit: int) -> None:
    """Two web processes (two tally tables) share one budget: together they let exactly that many through."""
    import api.throttling

    settings.INFERQ_THROTTLE_RATES = {"api": f"{limit}/min"}
    request, throttle = poll_request(user), CacheRateThrottle()
    tables: list[dict[str, Any]] = [{}, {}]
    allowed = 0
    for i in range(limit + 200):
        monkeypatch.setattr(api.throttling, "_tallies", tables[i % 2])
        allowed += throttle.allow_request(request, None)
    assert allowed == limit
    # Well below 80% of the limit, most hits were tallied locally.
    assert len(counted_syncs) < limit + 200 - 0.7 * limit


@pytest.mark.parametrize("backend", ["locmem", "redis"])
def test_several_hits_at_once_are_all_counted_or_none(user: Any, settings: Any, monkeypatch: Any,
                                                      backend: str) -> None:
    """A bulk submit counts each of its inputs: hits that do not all fit are refused together and taken back."""
    import api.throttling

    if backend == "redis":
        from tests.api.test_redis_cache import make_cache

        monkeypatch.setattr(api.throttling, "cache", make_cache()[0])
    settings.INFERQ_THROTTLE_RATES = {"api": "10/min"}
    monkeypatch.setattr(api.throttling.time, "time", Clock(60_000.0 * 60 + 1))
    request, throttle = poll_request(user), CacheRateThrottle()

    assert throttle.allow_hits(request, 7)
    assert not throttle.allow_hits(request, 4)  # 11 > 10: none of the four is counted
    assert throttle.allow_hits(request, 3)  # so three still fit
    assert not throttle.allow_request(request, None)
    assert throttle.allow_hits(request, 0)  # nothing asked, nothing refused


def test_far_below_a_large_limit_several_hits_are_tallied_together(user: Any, settings: Any,
                                                                   counted_syncs: list[int]) -> None:
    settings.INFERQ_THROTTLE_RATES = {"api": "10000/min"}
    request, throttle = poll_request(user), CacheRateThrottle()

    assert throttle.allow_hits(request, 1)  # the first hit reads the shared count
    assert all(throttle.allow_hits(request, 20) for _ in range(3))  # 60 pending, under the 64 a trip carries
    assert throttle.allow_hits(request, 20)  # 80: sent

    assert counted_syncs == [1, 80]
