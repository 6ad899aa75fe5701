"""Django app config for the InferQ API."""

import warnings

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "InferQ"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from PIL import Image

        # An image above Pillow's MAX_IMAGE_PIXELS is refused with `image_too_large` by the size check in
        # api/inputs.py (and workers/handlers/image_classifier.py), not by Pillow's warning: it would only
        # repeat that in the log. Set once, while the process starts, not per image (see check_image).
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
