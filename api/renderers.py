"""DRF's JSON renderer, with the answer every client asks for (plain `application/json`) encoded by one encoder.

DRF's `JSONRenderer.render` parses the accepted media type's parameters for an `indent` and builds a
JSON encoder on every call; each job is answered on every submit and poll. With no indent asked for,
this writes the same bytes from an encoder made once per renderer configuration; anything else (an
indent in the media type or the renderer context, an absent body) is DRF's own rendering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from rest_framework import renderers
from rest_framework.compat import LONG_SEPARATORS, SHORT_SEPARATORS


class JSONRenderer(renderers.JSONRenderer):
    _encoders: ClassVar[dict[tuple[type, bool, bool, bool], json.JSONEncoder]] = {}

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> bytes:
        if data is None or accepted_media_type not in (None, self.media_type) or \
                (renderer_context or {}).get("indent") is not None:
            rendered: bytes = super().render(data, accepted_media_type, renderer_context)
            return rendered
        key = (self.encoder_class, self.compact, self.ensure_ascii, self.strict)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = self.encoder_class(
                ensure_ascii=self.ensure_ascii, allow_nan=not self.strict,
                separators=SHORT_SEPARATORS if self.compact else LONG_SEPARATORS)
        # As DRF does: \u2028 and \u2029 escaped, so the JSON is also valid JavaScript.
        return encoder.encode(data).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()
