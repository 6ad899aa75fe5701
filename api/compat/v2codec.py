"""The Open Inference Protocol (KServe v2) wire format: JSON tensors and the binary tensor extension.

A request is JSON (`inputs: [{name, shape, datatype, data}]`), or — as tritonclient sends by
default — a JSON header of `Inference-Header-Content-Length` bytes followed by each input's raw
bytes (`parameters.binary_data_size`). BYTES elements are length-prefixed (4 bytes, little
endian) in binary, and base64 strings in JSON. Responses mirror that: outputs as JSON `data`, or
as binary after the JSON header when the request asked for binary outputs.
https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.exceptions import InvalidInput, PayloadTooLarge

V2_TO_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
               "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
               "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}


@dataclass
class V2Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None        # numeric tensors
    items: list[bytes] = field(default_factory=list)  # BYTES tensors, row-major


@dataclass
class V2Output:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]                      # flat, row-major: numbers, or bytes for BYTES


@dataclass
class V2Request:
    id: str | None
    inputs: list[V2Tensor]
    outputs: list[dict[str, Any]] | None
    binary_output: bool


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip/deflate Content-Encoding, refusing anything that inflates past `limit` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    encoding = encoding.lower()
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Unsupported Content-Encoding {encoding!r}.", code="invalid_request")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"Body is not valid {encoding}: {exc}.", code="invalid_request") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"Decompressed body is larger than the {limit}-byte limit.")
    return out


def _split_bytes(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise InvalidInput("BYTES tensor is truncated.", code="invalid_tensor")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise InvalidInput("BYTES tensor is truncated.", code="invalid_tensor")
        items.append(blob[offset:offset + size])
        offset += size
    return items


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput("BYTES elements in JSON must be base64 strings.", code="invalid_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"BYTES element is not valid base64: {exc}.", code="invalid_base64") from exc


def _tensor(spec: Any, binary: memoryview, offset: int) -> tuple[V2Tensor, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput("Each input needs a name, shape and datatype.", code="invalid_json")
    name, datatype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"Input {name!r}: shape must be a list of non-negative integers.", code="invalid_tensor")
    if datatype != "BYTES" and datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"Input {name!r}: unsupported datatype {datatype!r}.", code="invalid_tensor")
    count = int(np.prod(shape)) if shape else 1
    size = (spec.get("parameters") or {}).get("binary_data_size")
    tensor = V2Tensor(name=name, datatype=datatype, shape=shape)
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"Input {name!r}: binary_data_size runs past the body.", code="invalid_tensor")
        raw = bytes(binary[offset:offset + size])
        offset += size
        if datatype == "BYTES":
            tensor.items = _split_bytes(raw)
        else:
            dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
            if len(raw) != count * dtype.itemsize:
                raise InvalidInput(f"Input {name!r}: {len(raw)} bytes do not hold {shape} of {datatype}.",
                                   code="invalid_tensor")
            tensor.array = np.frombuffer(raw, dtype=dtype).astype(V2_TO_NUMPY[datatype]).reshape(shape)
    elif "data" in spec:
        if datatype == "BYTES":
            tensor.items = [_b64(v) for v in _flatten(spec["data"])]
        else:
            try:
                tensor.array = np.asarray(_flatten(spec["data"]), dtype=V2_TO_NUMPY[datatype]).reshape(shape)
            except (ValueError, TypeError, OverflowError) as exc:
                raise InvalidInput(f"Input {name!r}: data does not fit {datatype}{shape}: {exc}.",
                                   code="invalid_tensor") from exc
    else:
        raise InvalidInput(f"Input {name!r} has neither data nor binary_data_size.", code="invalid_tensor")
    if datatype == "BYTES" and len(tensor.items) != count:
        raise InvalidInput(f"Input {name!r}: {len(tensor.items)} elements do not fill shape {shape}.",
                           code="invalid_tensor")
    return tensor, offset


def parse_infer_request(body: bytes, header_length: str | None) -> V2Request:
    """Parse a v2 infer request (JSON, or JSON header + binary tensors)."""
    if header_length:
        try:
            split = int(header_length)
        except ValueError as exc:
            raise InvalidInput("Inference-Header-Content-Length is not a number.", code="invalid_request") from exc
        if not 0 < split <= len(body):
            raise InvalidInput("Inference-Header-Content-Length runs past the body.", code="invalid_request")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    try:
        payload = json.loads(head)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past the interpreter's limit
        raise InvalidInput(f"The inference header is not JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise InvalidInput('The request needs "inputs": [{"name", "shape", "datatype", "data"}].',
                           code="invalid_json")
    inputs, offset = [], 0
    for spec in payload["inputs"]:
        tensor, offset = _tensor(spec, binary, offset)
        inputs.append(tensor)
    outputs = payload.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or
                                not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise InvalidInput('"outputs" must be a list of {"name": ...}.', code="invalid_json")
    params = payload.get("parameters") or {}
    request_id = payload.get("id")
    return V2Request(id=str(request_id) if request_id not in (None, "") else None, inputs=inputs, outputs=outputs,
                     binary_output=bool(params.get("binary_data_output", False)))


def _binary(output: V2Output) -> bytes:
    if output.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in output.values)
    dtype = np.dtype(V2_TO_NUMPY[output.datatype]).newbyteorder("<")
    return np.asarray(output.values, dtype=dtype).tobytes()


def _json_values(output: V2Output) -> list[Any]:
    if output.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in output.values]
    return output.values


def encode_infer_response(*, model: str, version: str, request_id: str, outputs: list[V2Output],
                          binary: set[str], parameters: dict[str, Any] | None = None) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output travels as binary."""
    blobs: list[bytes] = []
    described = []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.name in binary:
            blob = _binary(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_values(output)
        described.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "id": request_id, "outputs": described}
    if parameters:
        body["parameters"] = parameters
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)

