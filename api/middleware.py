"""Last line of defence: no traceback or HTML error page ever reaches a client."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from api.exceptions import error_body

logger = logging.getLogger("api.errors")


class JsonErrorMiddleware:
    """Turns unhandled exceptions into the one error shape (503 for an unreachable database or Redis)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        if isinstance(exception, DatabaseError):
            logger.error("database error on %s %s: %s", request.method, request.path, exception)
            response = JsonResponse(
                error_body("database_unavailable", "The database is unavailable; try again shortly."), status=503
            )
            response["Retry-After"] = "5"
            return response
        if isinstance(exception, RedisError | KombuOperationalError):
            # Redis is the broker, the cache and the throttles' counter: any use of it while it is down
            # is an outage the client should retry, never a 500.
            logger.error("redis unavailable on %s %s: %s", request.method, request.path, exception)
            response = JsonResponse(
                error_body("broker_unavailable", "The job queue is unavailable; try again shortly."), status=503
            )
            response["Retry-After"] = "5"
            return response
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse(error_body("too_large", "The request body is too large."), status=413)
        if isinstance(exception, RecursionError):
            # Input nested past the interpreter's limit (JSON parsed outside DRF's parsers): the client's doing.
            logger.warning("input nested too deeply on %s %s", request.method, request.path, exc_info=exception)
            return JsonResponse(error_body("bad_request", "The request is nested too deeply."), status=400)
        if isinstance(exception, SuspiciousOperation | UnreadablePostError):
            # Too many form fields or files, a body cut short: the client's fault, which Django itself
            # would answer 400 had a view not raised it.
            logger.warning("bad request on %s %s: %s", request.method, request.path, exception)
            return JsonResponse(error_body("bad_request", "The request is malformed or exceeds a request limit."),
                                status=400)
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return JsonResponse(error_body("internal_error", "Internal server error."), status=500)


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("permission_denied", "Permission denied."), status=403)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "Internal server error."), status=500)
