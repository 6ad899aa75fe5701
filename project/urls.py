"""Root URLs: the API, its schema and docs, and the admin."""

from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api.urls import urlpatterns as api_urlpatterns

urlpatterns = [
    *api_urlpatterns,  # listed, not included: one resolver level fewer on every request (api/urls.py)
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
]

handler400 = "api.middleware.json_400"
handler403 = "api.middleware.json_403"
handler404 = "api.middleware.json_404"
handler500 = "api.middleware.json_500"
