"""Django app config for the InferQ API."""

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "InferQ"
    default_auto_field = "django.db.models.BigAutoField"
