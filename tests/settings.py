"""Settings for the fast unit tests: project settings with an in-memory broker and a temp store."""

import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="inferq-test-")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("INFERQ_VAR_DIR", _tmp)
os.environ.setdefault("MODEL_STORE", os.path.join(_tmp, "models"))
os.environ["CELERY_BROKER_URL"] = "memory://"

from project.settings import *  # noqa: E402,F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Nothing in a unit test may reach a real Redis (the autouse fake_redis fixture replaces the client);
# should something slip past it, it fails fast on a closed port instead of writing to the machine's.
REDIS_URL = "redis://127.0.0.1:1/0"
