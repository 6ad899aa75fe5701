"""The API plus a trivial Django view, served by the same uWSGI configuration for comparison."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from project.urls import urlpatterns as api_urlpatterns


def trivial(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b'{"ok": true}', content_type="application/json")


urlpatterns = [path("_bench/trivial", trivial), *api_urlpatterns]
