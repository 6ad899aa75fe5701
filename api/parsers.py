"""A DRF parser that hands the raw body through as bytes, capped at the input size limit."""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from rest_framework.parsers import BaseParser

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
