"""KServe / Open Inference Protocol v2 REST endpoints (what Triton's `tritonclient[http]` speaks).

`POST /v2/models/{model}[/versions/{v}]/infer` turns each sample of the request's one input
into an ordinary job (a tensor model takes `[N, *shape]` or `shape` of the manifest's dtype; an
image model takes BYTES, one encoded image per element), waits for all of them on pub/sub,
and answers with output tensors: a tensor model's `output`; an image classifier's top-k as
`probabilities` (FP32), `indices` (INT64) and `labels` (BYTES), or Triton's classification
strings `"score:index:label"` when an output asks for `classification`. Errors are the
protocol's `{"error": "..."}`, which tritonclient parses, not InferQ's shape.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from redis.exceptions import RedisError
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from api.apiview import ApiView
from api.compat.auth import COMPAT_AUTHENTICATION
from api.compat.sync import jobs_run_sync
from api.compat.v2codec import NUMPY_TO_V2, V2Output, V2Request, decompress, encode_infer_response, parse_infer_request
from api.exceptions import ApiError, InvalidInput, PayloadTooLarge, error_headers
from api.heartbeats import workers_online
from api.inputs import ModelInput, input_from_bytes
from api.models import Job, JobStatus
from api.schema import FirstRendererNegotiation
from api.services import model_spec_get
from api.throttling import SubmitRateThrottle
from workers.store import ModelSpec, get_store

INPUT_ERRORS = {"invalid_image", "invalid_tensor", "image_too_large", "invalid_input", "empty_input"}
TAGS = ["KServe v2 compatibility"]
V2_ERROR = inline_serializer("V2Error", {"error": serializers.CharField()})
MODEL = OpenApiParameter("model", OpenApiTypes.STR, OpenApiParameter.PATH)
VERSION = OpenApiParameter("version", OpenApiTypes.STR, OpenApiParameter.PATH)


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response({"error": message}, status=status, headers=headers)


def v2_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        return v2_error(exc.status_code, exc.message, error_headers(exc))
    if isinstance(exc, drf_exceptions.APIException):
        return v2_error(exc.status_code, str(exc.detail), error_headers(exc))
    return None


class V2View(ApiView):
    authentication_classes = COMPAT_AUTHENTICATION
    permission_classes = [IsAuthenticated]
    content_negotiation_class = FirstRendererNegotiation

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return v2_exception_handler


class PublicV2View(V2View):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []


# --- model description ---------------------------------------------------------------------------


def _top_k(spec: ModelSpec) -> int:
    return min(spec.top_k, len(spec.labels)) if spec.labels else spec.top_k


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    kind = spec.input.get("kind")
    if kind == "tensor":
        dtype = NUMPY_TO_V2.get(spec.input.get("dtype", "float32"), "FP32")
        inputs = [{"name": "input", "datatype": dtype, "shape": [-1, *spec.input.get("shape", [])]}]
        outputs = [{"name": "output", "datatype": "FP32", "shape": [-1, len(spec.labels) or -1]}]
    elif kind == "image":
        k = _top_k(spec)
        inputs = [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                   {"name": "indices", "datatype": "INT64", "shape": [-1, k]},
                   {"name": "labels", "datatype": "BYTES", "shape": [-1, k]}]
    else:
        inputs = [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
        outputs = [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
    return {"name": spec.name, "versions": get_store().versions(spec.name), "platform": "pytorch",
            "inputs": inputs, "outputs": outputs}


# --- request → jobs → response --------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def samples_from_request(request: V2Request, spec: ModelSpec) -> tuple[list[ModelInput], bool]:
    """One validated model input per sample, and whether the request had a batch dimension."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"Model {spec.name!r} takes exactly one input tensor.", code="invalid_tensor")
    tensor = request.inputs[0]
    if spec.input.get("kind") == "tensor":
        expected = NUMPY_TO_V2.get(spec.input.get("dtype", "float32"))
        shape = list(spec.input.get("shape", []))
        if tensor.datatype != expected or tensor.array is None:
            raise InvalidInput(f"Model {spec.name!r} takes {expected}, not {tensor.datatype}.", code="invalid_tensor")
        if tensor.shape == shape:
            arrays, batched = [tensor.array], False
        elif tensor.shape[1:] == shape:
            arrays, batched = list(tensor.array), True
        else:
            raise InvalidInput(f"Input shape {tensor.shape} is neither {shape} nor [N, *{shape}].",
                               code="invalid_tensor")
        items = [(_npy(a), "application/x-npy") for a in arrays]
    else:
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"Model {spec.name!r} takes BYTES (one encoded input per element).",
                               code="invalid_tensor")
        items, batched = [(b, "application/octet-stream") for b in tensor.items], len(tensor.shape) > 0
    if not items:
        raise InvalidInput("The input tensor is empty.", code="invalid_tensor")
    if len(items) > settings.INFERQ_COMPAT_MAX_BATCH:
        raise InvalidInput(f"{len(items)} samples in one request; the limit is {settings.INFERQ_COMPAT_MAX_BATCH}.",
                           code="invalid_tensor")
    return [input_from_bytes(data, content_type, spec) for data, content_type in items], batched


def outputs_from_jobs(jobs: list[Job], spec: ModelSpec, batched: bool,
                      requested: list[dict[str, Any]] | None) -> list[V2Output]:
    n = len(jobs)
    results = [job.result or {} for job in jobs]
    outputs: dict[str, V2Output] = {}
    if all("predictions" in r for r in results):
        rows = [r["predictions"] for r in results]
        k = min(len(row) for row in rows)
        lead = [n] if batched else []
        outputs["probabilities"] = V2Output("probabilities", "FP32", [*lead, k],
                                            [p["probability"] for row in rows for p in row[:k]])
        outputs["indices"] = V2Output("indices", "INT64", [*lead, k], [p["index"] for row in rows for p in row[:k]])
        outputs["labels"] = V2Output("labels", "BYTES", [*lead, k],
                                     [str(p["label"]).encode() for row in rows for p in row[:k]])
        for ask in requested or []:
            classes = (ask.get("parameters") or {}).get("classification")
            if ask["name"] in outputs and isinstance(classes, int) and classes > 0:
                c = min(classes, k)
                outputs[ask["name"]] = V2Output(ask["name"], "BYTES", [*lead, c], [
                    f"{p['probability']:f}:{p['index']}:{p['label']}".encode() for row in rows for p in row[:c]])
    elif all("output" in r for r in results):
        first = results[0].get("shape") or list(np.shape(results[0]["output"]))
        values = [float(x) for r in results for x in np.asarray(r["output"], dtype=np.float64).ravel()]
        outputs["output"] = V2Output("output", "FP32", [n, *first] if batched else list(first), values)
    else:
        import json

        outputs["output"] = V2Output("output", "BYTES", [n] if batched else [],
                                     [json.dumps(r).encode() for r in results])
    if not requested:
        return list(outputs.values())
    unknown = [ask["name"] for ask in requested if ask["name"] not in outputs]
    if unknown:
        raise InvalidInput(f"Unknown output {unknown[0]!r}; this model has {', '.join(outputs)}.",
                           code="invalid_request")
    return [outputs[ask["name"]] for ask in requested]


def binary_outputs(request: V2Request, outputs: list[V2Output]) -> set[str]:
    asked = {ask["name"]: (ask.get("parameters") or {}).get("binary_data") for ask in request.outputs or []}
    return {o.name for o in outputs if asked.get(o.name) is True or (request.binary_output and
                                                                     asked.get(o.name) is not False)}


def job_failure(jobs: list[Job]) -> Response | None:
    failed = next((job for job in jobs if job.status != JobStatus.SUCCEEDED), None)
    if failed is None:
        return None
    message = f"job {failed.id} {failed.status}: {failed.error_code or 'no result'}: {failed.error_message}"
    return v2_error(400 if failed.error_code in INPUT_ERRORS else 500, message.strip(": "))


# --- views -----------------------------------------------------------------------------------------


class ServerMetadataApi(PublicV2View):
    @extend_schema(operation_id="v2_server_metadata", summary="KServe v2: server metadata", tags=TAGS, auth=[],
                   responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response({"name": "inferq", "version": settings.SPECTACULAR_SETTINGS.get("VERSION", "1"),
                         "extensions": ["binary_tensor_data", "classification"]})


class ServerLiveApi(PublicV2View):
    @extend_schema(operation_id="v2_health_live", summary="KServe v2: liveness", tags=TAGS, auth=[],
                   responses={200: inline_serializer("V2Live", {"live": serializers.BooleanField()})})
    def get(self, request: Request) -> Response:
        return Response({"live": True})


class ServerReadyApi(PublicV2View):
    @extend_schema(operation_id="v2_health_ready", summary="KServe v2: readiness (a worker for every model)",
                   tags=TAGS, auth=[],
                   responses={200: inline_serializer("V2Ready", {"ready": serializers.BooleanField()}),
                              503: inline_serializer("V2NotReady", {"ready": serializers.BooleanField()})})
    def get(self, request: Request) -> Response:
        try:
            specs = get_store().latest()
            ready = bool(specs) and all(workers_online(spec.name) for spec in specs)
        except RedisError:
            ready = False
        return Response({"ready": ready}, status=200 if ready else 503)


class ModelMetadataApi(V2View):
    @extend_schema(operation_id="v2_model_metadata", summary="KServe v2: model metadata", tags=TAGS,
                   parameters=[MODEL], responses={200: OpenApiTypes.OBJECT, 401: V2_ERROR, 404: V2_ERROR})
    def get(self, request: Request, model: str, version: str | None = None) -> Response:
        return Response(model_metadata(model_spec_get(name=model, version=version)))


class ModelVersionMetadataApi(ModelMetadataApi):
    @extend_schema(operation_id="v2_model_version_metadata", summary="KServe v2: model version metadata",
                   tags=TAGS, parameters=[MODEL, VERSION],
                   responses={200: OpenApiTypes.OBJECT, 401: V2_ERROR, 404: V2_ERROR})
    def get(self, request: Request, model: str, version: str | None = None) -> Response:
        return super().get(request, model, version)


class ModelReadyApi(V2View):
    @extend_schema(operation_id="v2_model_ready", summary="KServe v2: model readiness (a worker serves it)",
                   tags=TAGS, parameters=[MODEL],
                   responses={200: OpenApiTypes.OBJECT, 401: V2_ERROR, 404: V2_ERROR, 503: OpenApiTypes.OBJECT})
    def get(self, request: Request, model: str, version: str | None = None) -> Response:
        spec = model_spec_get(name=model, version=version)
        try:
            ready = bool(workers_online(spec.name))
        except RedisError:
            ready = False
        return Response({"name": spec.name, "ready": ready}, status=200 if ready else 503)


class ModelVersionReadyApi(ModelReadyApi):
    @extend_schema(operation_id="v2_model_version_ready", summary="KServe v2: model version readiness",
                   tags=TAGS, parameters=[MODEL, VERSION],
                   responses={200: OpenApiTypes.OBJECT, 401: V2_ERROR, 404: V2_ERROR, 503: OpenApiTypes.OBJECT})
    def get(self, request: Request, model: str, version: str | None = None) -> Response:
        return super().get(request, model, version)


INFER_DOC: dict[str, Any] = dict(
    tags=TAGS,
    description="JSON tensors (`{\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}`), or the binary "
                "tensor extension (`Inference-Header-Content-Length`). Each sample becomes a job on the model's "
                "queue; the request waits for all of them (up to `INFERQ_COMPAT_TIMEOUT` s).",
    request={"application/json": OpenApiTypes.OBJECT, "application/octet-stream": OpenApiTypes.BINARY},
    responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="`{model_name, model_version, id, outputs}`"),
               **{code: OpenApiResponse(V2_ERROR) for code in (400, 401, 404, 413, 429, 500, 503, 504)}},
)


class ModelInferApi(V2View):
    throttle_classes = [SubmitRateThrottle]

    @extend_schema(operation_id="v2_model_infer", summary="KServe v2: inference", parameters=[MODEL], **INFER_DOC)
    def post(self, request: Request, model: str, version: str | None = None) -> HttpResponse | Response:
        spec = model_spec_get(name=model, version=version)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = request.META.get("CONTENT_LENGTH")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"The request is larger than the {limit}-byte limit.")
        body = decompress(request._request.body, request.headers.get("Content-Encoding"), limit)
        v2 = parse_infer_request(body, request.headers.get("Inference-Header-Content-Length"))
        inputs, batched = samples_from_request(v2, spec)
        jobs = jobs_run_sync(owner=request.user, spec=spec, inputs=inputs)
        failure = job_failure(jobs)
        if failure is not None:
            return failure
        outputs = outputs_from_jobs(jobs, spec, batched, v2.outputs)
        content, header_length = encode_infer_response(
            model=spec.name, version=spec.version, request_id=v2.id or str(jobs[0].id), outputs=outputs,
            binary=binary_outputs(v2, outputs), parameters={"inferq_jobs": ",".join(str(j.id) for j in jobs)})
        response = HttpResponse(content, content_type="application/json" if header_length is None
                                else "application/octet-stream")
        if header_length is not None:
            response["Inference-Header-Content-Length"] = str(header_length)
        return response


class ModelVersionInferApi(ModelInferApi):
    @extend_schema(operation_id="v2_model_version_infer", summary="KServe v2: inference on a model version",
                   parameters=[MODEL, VERSION], **INFER_DOC)
    def post(self, request: Request, model: str, version: str | None = None) -> HttpResponse | Response:
        return super().post(request, model, version)
