"""The routes: hot ones listed first, none shadowing another."""

from __future__ import annotations

import pytest
from django.urls import resolve, reverse
from django.urls.resolvers import RoutePattern

from project.urls import urlpatterns


def routes() -> list[tuple[str, list[str]]]:
    """(name, converter names) of every named route at the root."""
    found = []
    for pattern in urlpatterns:
        if getattr(pattern, "name", None) and isinstance(pattern.pattern, RoutePattern):
            found.append((pattern.name, list(pattern.pattern.converters)))
    return found


def test_every_api_route_is_listed_at_the_root_without_an_include() -> None:
    names = [name for name, _ in routes()]
    assert names[:2] == ["job-detail", "job-create"]
    assert {"model-list", "job-cancel", "healthz", "metrics", "torchserve-predict", "v2-model-infer"} <= set(names)


@pytest.mark.parametrize(("name", "converters"), routes())
def test_each_route_resolves_to_itself(name: str, converters: list[str]) -> None:
    # A value for each parameter, then the path it makes: no route listed earlier may take it.
    path = reverse(name, kwargs={converter: f"sample-{converter}" for converter in converters})
    assert resolve(path).url_name == name
