"""The base of InferQ's API views: DRF's APIView, with the headers every answer carries worked out once per view class.

DRF's `default_response_headers` builds `Allow` on every request by probing the view for each of
the nine HTTP method handlers (`allowed_methods`), and content negotiation reads `request.GET`
(parsing the query string) even when there is none. On a status poll, these were a few percent
each of the whole request; the answers are the same.
"""

from __future__ import annotations

from typing import ClassVar

from rest_framework.views import APIView


class ApiView(APIView):
    _class_headers: ClassVar[dict[tuple[type, bool], dict[str, str]]] = {}

    @property
    def default_response_headers(self) -> dict[str, str]:
        # Keyed by whether this instance has `head` too: Django's View.setup gives a view with `get` a `head`.
        key = (type(self), "head" in self.__dict__)
        headers = ApiView._class_headers.get(key)
        if headers is None:
            headers = ApiView._class_headers[key] = dict(super().default_response_headers)
        return dict(headers)  # finalize_response pops from it
