"""`GET /metrics`: Prometheus exposition (text 0.0.4, or OpenMetrics when the scraper asks for it)."""

from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client.exposition import choose_encoder
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from api.apiview import ApiView
from api.exceptions import error_body
from api.metrics import metrics_registry
from api.schema import FirstRendererNegotiation, error_responses


class MetricsApi(ApiView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        operation_id="metrics",
        summary="Prometheus metrics",
        description=(
            "Jobs by model and status, queue depth, workers online, and histograms of queue, inference "
            "and total time and of batch sizes, in Prometheus' text format (OpenMetrics when the `Accept` "
            "header asks for it). Open unless `INFERQ_METRICS_TOKEN` is set; then send "
            "`Authorization: Bearer <that token>`."
        ),
        auth=[],
        responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text format"),
                   **error_responses(401)},
    )
    def get(self, request: Request) -> HttpResponse | Response:
        expected = settings.INFERQ_METRICS_TOKEN
        if expected:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
                return Response(error_body("not_authenticated", "Send Authorization: Bearer <INFERQ_METRICS_TOKEN>."),
                                status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return HttpResponse(encoder(metrics_registry()), content_type=content_type)
