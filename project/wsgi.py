"""WSGI entry point served by uWSGI (`uwsgi.ini`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# The web tier does no linear algebra: numpy (loaded with the URLconf, for .npy and tensor inputs) gets no
# OpenBLAS thread pool. That pool's teardown in exit() deadlocked now and then (about 1 stop in 3 after a
# burst of submits), so a stopping web process hung until uWSGI's reload mercy ran out or it was killed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

application = get_wsgi_application()

# The URLconf (and with it DRF, the views, numpy and Pillow) is imported now, while the process loads, instead of
# by its first request: uWSGI hands a process requests once its app has loaded, and a new or recycled web process
# held its first requests for the import (0.36 s here; the others of its threads queued on the import lock).
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018  (the property imports the URLconf)

# Over-limit bodies are refused from their Content-Length before they are read (api/bodylimit.py).
from api.bodylimit import BodyLimit  # noqa: E402  (needs the settings configured above)

application = BodyLimit(application)

# A web process about to be recycled (uwsgi.ini max-requests) closes its connections cleanly first.
from api.keepalive import CloseBeforeRecycle  # noqa: E402

application = CloseBeforeRecycle(application)

# Everything loaded by now (Django, DRF, the URLconf, numpy, Pillow: about 170 000 objects) lives as long as the
# process, so the cyclic collector need not walk it: a full collection of it came about once per thousand
# submits and cost a tenth of their CPU (in one process, 1.94 -> 1.75 ms per submit; see project/heap.py).
from project.heap import freeze_loaded  # noqa: E402

freeze_loaded()
