"""DRF parsers: the raw body as bytes (capped at the input size limit), JSON that cannot crash the view, and a
multipart body as its parts (the bulk submit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser

from api.exceptions import InvalidInput, PayloadTooLarge


class RawBytesParser(BaseParser):
    """Matches any content type not claimed by JSON or multipart (listed last)."""

    media_type = "*/*"

    def parse(self, stream: IO[bytes] | None, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> bytes:
        if stream is None:
            return b""
        limit = settings.INFERQ_MAX_INPUT_BYTES
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"Input is larger than the {limit}-byte limit.")
        return data


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, except that a body nested past Python's recursion limit is a 400, not a 500."""

    def parse(self, stream: IO[bytes] | None, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body is nested too deeply.") from exc


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body: its field name, file name (None for a plain field), declared
    Content-Type (None when it declares none) and bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


# Transfer encodings a part may declare that leave its bytes as they are (RFC 7578 §4.7: none should be sent).
_IDENTITY_ENCODINGS = ("", "binary", "8bit", "7bit")


class PartsParser(BaseParser):
    """multipart/form-data as a list of `Part`s, each part's bytes sliced out of the whole body in one pass.

    For the bulk submit, whose body is many files: Django's MultiPartParser streams a body through Python
    in 64 KiB chunks, files into upload handlers, and was a quarter of a 14-image bulk submit's web CPU (py-spy).
    The body is bounded already (DATA_UPLOAD_MAX_MEMORY_SIZE, enforced from Content-Length or while a chunked body
    is read: api/bodylimit.py), so it is read whole and split with `bytes.find`. At most
    INFERQ_MAX_BULK_INPUTS parts; a body that is not well-formed multipart is a 400 `bad_request`.
    """

    media_type = "multipart/form-data"

    def parse(self, stream: IO[bytes] | None, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> list[Part]:
        _, params = parse_header_parameters(media_type or "")
        boundary = params.get("boundary", "")
        if not boundary or len(boundary) > 200 or not boundary.isascii():
            raise InvalidInput("The multipart body's Content-Type has no usable boundary.", code="bad_request")
        body = stream.read() if stream is not None else b""
        return split_parts(body, boundary.encode(), limit=settings.INFERQ_MAX_BULK_INPUTS)


def split_parts(body: bytes, boundary: bytes, *, limit: int) -> list[Part]:
    """The parts of a multipart body (RFC 2046 §5.1.1: a preamble, then each part after a `--boundary` line,
    closed by `--boundary--`); raises InvalidInput (`bad_request`, or `too_many_inputs` past `limit` parts)."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise InvalidInput("The multipart body has no part (no boundary line).", code="bad_request")
        position += 2
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            return parts  # the closing delimiter; anything after it is the epilogue
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise InvalidInput("The multipart body is malformed (a boundary line is broken).", code="bad_request")
        head_end = body.find(b"\r\n\r\n", line_end)
        following = body.find(b"\r\n" + delimiter, line_end)
        if following < 0:
            raise InvalidInput("The multipart body is truncated (its closing boundary is missing).",
                               code="bad_request")
        if len(parts) == limit:
            raise InvalidInput(f"A bulk submit carries at most {limit} inputs; send the rest in another request.",
                               code="too_many_inputs")
        if head_end < 0 or head_end + 2 > following:  # a part's headers end before its content, with a blank line
            raise InvalidInput("The multipart body is malformed (a part's headers do not end).", code="bad_request")
        parts.append(_part(body[line_end + 2:head_end], body[head_end + 4:following] if head_end + 4 <= following
                           else b""))
        position = following + 2


def _part(head: bytes, data: bytes) -> Part:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, colon, value = line.partition(":")
        if not colon:
            raise InvalidInput("The multipart body is malformed (a part's header has no colon).", code="bad_request")
        headers[key.strip().lower()] = value.strip()
    disposition, params = parse_header_parameters(headers.get("content-disposition", ""))
    if disposition.lower() != "form-data" or "name" not in params:
        raise InvalidInput('Each part of a multipart body needs "Content-Disposition: form-data; name=...".',
                           code="bad_request")
    if headers.get("content-transfer-encoding", "").lower() not in _IDENTITY_ENCODINGS:
        raise InvalidInput("A part's Content-Transfer-Encoding must be binary (none): send its bytes as they are.",
                           code="bad_request")
    return Part(params["name"], params.get("filename"), headers.get("content-type") or None, data)
