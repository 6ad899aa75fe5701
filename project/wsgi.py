"""WSGI entry point served by uWSGI (`uwsgi.ini`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()

# Over-limit bodies are refused from their Content-Length before they are read (api/bodylimit.py).
from api.bodylimit import BodyLimit  # noqa: E402  (needs the settings configured above)

application = BodyLimit(application)

# A web process about to be recycled (uwsgi.ini max-requests) closes its connections cleanly first.
from api.keepalive import CloseBeforeRecycle  # noqa: E402

application = CloseBeforeRecycle(application)
