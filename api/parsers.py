"""DRF parsers: the raw body as bytes (capped at the input size limit), and JSON that cannot crash the view."""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser

from api.exceptions import PayloadTooLarge


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
