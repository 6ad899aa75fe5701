"""InferQ's one error vocabulary and the DRF handler that shapes every error body.

    ApiError                      {"error": {"code", "message"}}
    ├── InvalidInput (400)        bad_request, empty_input, invalid_image, invalid_json, invalid_base64,
    │                             invalid_tensor, image_too_large (pixels), too_many_inputs (a bulk submit)
    ├── NotFound (404)            not_found, unknown_model
    ├── PayloadTooLarge (413)     too_large
    ├── UnsupportedMediaType (415) unsupported_media_type
    ├── Conflict (409)            conflict, idempotency_key_reused
    ├── Overloaded (429)          queue_full (with Retry-After); DRF's throttles answer `throttled` the same way
    ├── ServiceUnavailable (503)  broker_unavailable, database_unavailable, wait_slots_full (with Retry-After)
    └── GatewayTimeout (504)      timeout (a synchronous TorchServe/KServe call outlived its wait)

DRF's own exceptions (authentication, throttling, method, parse errors) and Django's
404/500 are mapped onto the same shape, so a client handles exactly one format.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInput(ApiError):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid_input"


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class UnsupportedMediaType(ApiError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class Overloaded(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "queue_full"
    retry_after = 5


class ServiceUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"
    retry_after = 5


class GatewayTimeout(ApiError):
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    code = "timeout"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _drf_message(detail: Any) -> str:
    """Flatten DRF's nested ErrorDetail structures into one readable sentence."""
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_drf_message(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_drf_message(item) for item in detail)
    return str(detail)


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ParseError: "invalid_json",
    drf_exceptions.ValidationError: "invalid_request",
}


def error_headers(exc: Exception) -> dict[str, str] | None:
    """The headers a refusal carries: Retry-After (overload, throttling) and WWW-Authenticate."""
    if isinstance(exc, ApiError):
        return {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    return headers or None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error leaves as {"error": {"code", "message"}}."""
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, exc.message), status=exc.status_code, headers=error_headers(exc))
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        return Response(error_body("permission_denied", "Permission denied."), status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, drf_exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        if isinstance(exc, drf_exceptions.ParseError) and "JSON" not in str(exc.detail):
            code = "bad_request"
        return Response(error_body(code, _drf_message(exc.detail)), status=exc.status_code,
                        headers=error_headers(exc))
    # Anything else is a bug or an outage: log it with its traceback, tell the client nothing internal.
    return None
