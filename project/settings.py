"""Django settings for InferQ, read once from the environment (see `.env.example`)."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.redis_url import redis_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean flag the way people write them in shells: 1/true/yes/on."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def logger_levels(text: str) -> dict[str, dict[str, str]]:
    """LOG_LEVELS: comma-separated `logger=LEVEL` pairs, each logger (and those below it) at its own level over
    LOG_LEVEL, as `LOGGING["loggers"]` entries: `inferq.worker=INFO` shows a worker's load-time choices under
    `LOG_LEVEL=WARNING`."""
    loggers: dict[str, dict[str, str]] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, _, level = pair.partition("=")
        name, level = name.strip(), level.strip().upper()
        if not name or level not in LEVELS:
            raise ImproperlyConfigured(f"LOG_LEVELS: {pair!r} is not logger=LEVEL (LEVEL one of {', '.join(LEVELS)})")
        loggers[name] = {"level": level}
    return loggers


# Celery's own line for every task: "Task … received" (logged by the worker's consumer before it hands the task
# to its pool process) and "Task … succeeded in …" (by the pool process after it).
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def celery_task_line_level(level: str) -> str:
    """The level of Celery's per-task loggers under LOG_LEVEL `level`: WARNING (or `level` where that is higher), so
    that at the default INFO a job's log lines are InferQ's own ("job queued", "job started", "job succeeded", with
    the model and the timings), not those and Celery's two more per task, which say less and lengthened a small
    model's round trip by about half a millisecond (one client on digits, two stacks side by side, lower in 18 of
    24 turns without them); a failure is still logged, at ERROR. At DEBUG they are shown, and LOG_LEVELS sets
    them like any other logger (`celery.worker.strategy=INFO,celery.app.trace=INFO`)."""
    level = level.strip().upper()
    if level == "DEBUG" or (level in LEVELS and LEVELS.index(level) > LEVELS.index("WARNING")):
        return level
    return "WARNING"


# ---------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)
VAR_DIR = Path(os.environ.get("INFERQ_VAR_DIR", BASE_DIR / "var"))

# Secrets have no default outside DEBUG: a production deploy that forgets one fails loudly.
# On a developer's machine `make` generates one, once, into var/secret_key (never committed),
# so `manage.py` commands run by hand find it too.
# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
_local_secret = VAR_DIR / "secret_key"
if os.environ.get("DJANGO_SECRET_KEY"):
    SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
elif _local_secret.is_file():
    SECRET_KEY = _local_secret.read_text().strip()
elif DEBUG:
    SECRET_KEY = "insecure-dev-key-only-for-debug"  # noqa: S105 - DEBUG only
else:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set. Export one (see .env.example), or run `make run` once to generate "
        f"{_local_secret} for local use.")

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets served from here, not a CDN
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "api.middleware.JsonErrorMiddleware",
]

# `make bench` swaps in bench.urls (the API plus a trivial view) to compare against a bare Django view.
ROOT_URLCONF = os.environ.get("INFERQ_URLCONF", "project.urls")
WSGI_APPLICATION = "project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ---------------------------------------------------------------------------
# Database: SQLite (WAL) on one machine, DATABASE_URL (PostgreSQL) in production
# ---------------------------------------------------------------------------

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Health-checked only after a second unused (project/postgresql/base.py).
        DATABASES["default"]["ENGINE"] = "project.postgresql"
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the web tier read while a worker writes; IMMEDIATE avoids "database is locked"
    # on read-then-write transactions. https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-notes
    DATABASES = {
        "default": {
            # Django's SQLite backend, with concurrent writers queued on a kernel lock (project/sqlite/base.py).
            "ENGINE": "project.sqlite",
            "NAME": str(VAR_DIR / "db.sqlite3"),
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # Keep connections: opening one (and running the PRAGMAs) per request costs more than the query.
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
        }
    }

# ---------------------------------------------------------------------------
# Redis (broker, cache, worker heartbeats)
# ---------------------------------------------------------------------------

REDIS_URL = redis_url()

CACHES = {
    "default": {
        "BACKEND": "api.redis_cache.PooledRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "inferq",
        # One second: the throttles read this on every request, and a frozen Redis must still be a fast 503.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# ---------------------------------------------------------------------------
# Storage: inputs go through Django's storage API so S3 and friends work unchanged
# https://docs.djangoproject.com/en/5.2/ref/settings/#storages
# ---------------------------------------------------------------------------

MEDIA_ROOT = Path(os.environ.get("INFERQ_MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_URL = "/static/"

# ---------------------------------------------------------------------------
# InferQ
# ---------------------------------------------------------------------------

MODEL_STORE = Path(os.environ.get("MODEL_STORE", VAR_DIR / "models"))
# Largest accepted input body; uWSGI's limit-post is set just above it as a backstop.
INFERQ_MAX_INPUT_BYTES = env_int("INFERQ_MAX_INPUT_BYTES", 20 * 1024 * 1024)
# Inputs up to this size are kept in the job row itself rather than in the storage (MEDIA_ROOT or S3):
# one INSERT instead of a file written, read and deleted per job. 0 stores every input as a file.
INFERQ_INLINE_INPUT_BYTES = env_int("INFERQ_INLINE_INPUT_BYTES", 64 * 1024)
# Images above this many pixels are refused before decoding (decompression bombs).
INFERQ_MAX_IMAGE_PIXELS = env_int("INFERQ_MAX_IMAGE_PIXELS", 50_000_000)
# A job whose worker died this many times fails with `worker_lost` instead of looping.
INFERQ_MAX_ATTEMPTS = env_int("INFERQ_MAX_ATTEMPTS", 3)
# Seconds a worker owns a running job without renewing it; after that the job counts as orphaned
# (its worker died) and is claimed again. Workers renew every third of it.
INFERQ_LEASE_SECONDS = env_int("INFERQ_LEASE_SECONDS", 30)
# A queued job whose message is neither in its queue nor recently reserved by a worker this many seconds
# after it was published lost that message; the sweeper publishes it again (api/recovery.py).
INFERQ_LOST_MESSAGE_SECONDS = env_int("INFERQ_LOST_MESSAGE_SECONDS", 60)
# Seconds without a job after which a worker's pool process gives back the memory its batches freed
# (workers/idle.py); 0 never does.
INFERQ_IDLE_TRIM_S = env_float("INFERQ_IDLE_TRIM_S", 10.0)
# Dynamic batching: a worker runs queued jobs of one model as one forward pass (manifest batch_size,
# batch_delay_ms). Off: one job per forward pass.
INFERQ_BATCHING = env_bool("INFERQ_BATCHING", True)
# After a full batch, a worker process goes on with the model's queued backlog, batch after batch, for up to this
# many seconds under the same message (at most a quarter of the model's time limit); 0 hands back after one batch.
INFERQ_BACKLOG_RUN_S = env_float("INFERQ_BACKLOG_RUN_S", 1.0)
# Seconds a worker heartbeat stays valid; /readyz and /v1/models count workers seen within it.
INFERQ_HEARTBEAT_TTL = env_int("INFERQ_HEARTBEAT_TTL", 30)

# Inputs one bulk submit (`POST /v1/models/{model}/jobs/bulk`, multipart) may carry; its whole body stays within
# the one request body limit below.
INFERQ_MAX_BULK_INPUTS = env_int("INFERQ_MAX_BULK_INPUTS", 100)

DATA_UPLOAD_MAX_MEMORY_SIZE = INFERQ_MAX_INPUT_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = INFERQ_MAX_INPUT_BYTES + 1024 * 1024
# Uploads stay in memory (bodies are capped above), so no request ever leaves a temporary file behind.
# https://docs.djangoproject.com/en/5.2/ref/settings/#file-upload-handlers
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler"]

# ---------------------------------------------------------------------------
# Django REST framework
# https://www.django-rest-framework.org/api-guide/settings/
# ---------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["api.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.negotiation.FastContentNegotiation",
    # DRF's defaults, with JSON nested past the recursion limit answered 400 rather than 500.
    "DEFAULT_PARSER_CLASSES": ["api.parsers.SafeJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Per-token limits counted in the shared cache (Redis); rates are INFERQ_THROTTLE_* below.
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.ApiRateThrottle"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "InferQ API",
    "DESCRIPTION": "Submit inputs to PyTorch models, then poll (or wait) for results.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayOperationId": True},
    "COMPONENT_SPLIT_REQUEST": True,
}

# ---------------------------------------------------------------------------
# Security (clean `manage.py check --deploy` when DEBUG is off and TLS terminates upstream)
# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
# ---------------------------------------------------------------------------

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Behind the TLS-terminating proxy of a deploy, the proxy redirects HTTP to HTTPS; set this when Django must.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# HSTS is sent only on HTTPS requests (so `make run` over plain HTTP is unaffected): a year, subdomains included.
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a submission to the browsers' list, an operator's decision rather than a default.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
# Checks that do not apply as configured: the redirect is the proxy's job, preloading is opted into.
SILENCED_SYSTEM_CHECKS = [check for check, applies in (("security.W008", SECURE_SSL_REDIRECT),
                                                       ("security.W021", SECURE_HSTS_PRELOAD)) if not applies]
if os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# ---------------------------------------------------------------------------
# Internationalization
# ---------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# ---------------------------------------------------------------------------
# Logging: one line per event, JSON when LOG_FORMAT=json
# ---------------------------------------------------------------------------

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "api.logformat.TextFormatter"},
        "json": {"()": "api.logformat.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": os.environ.get("LOG_FORMAT", "text")},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        **{name: {"level": celery_task_line_level(LOG_LEVEL)} for name in CELERY_TASK_LOGGERS},
        **logger_levels(os.environ.get("LOG_LEVELS", "")),
    },
}

# Per-model bound on queued jobs (a manifest's `max_queued` overrides); beyond it submit answers 429.
INFERQ_MAX_QUEUED = env_int("INFERQ_MAX_QUEUED", 10_000)
# Keep job inputs after the job ends (off: inputs are deleted when a job finishes).
INFERQ_KEEP_INPUTS = env_bool("INFERQ_KEEP_INPUTS", False)

# ---------------------------------------------------------------------------
# API features: waiting, result cache, throttling, metrics, retention, TorchServe/KServe compatibility
# ---------------------------------------------------------------------------

# uWSGI threads per web process (uwsgi.ini reads the same variable). A waiting request (Prefer: wait,
# ?wait=, the synchronous TorchServe/KServe calls) holds one; waiters may hold all but one of them,
# so submissions always find a thread (4 processes x 4 threads: 12 wait slots, 4 threads kept free).
# Beyond that a wait answers at once (sync calls answer 503).
INFERQ_WEB_THREADS = env_int("INFERQ_WEB_THREADS", 4)
INFERQ_WAIT_SLOTS = env_int("INFERQ_WAIT_SLOTS", max(1, INFERQ_WEB_THREADS - 1))
# A web process, and a worker's parent before its pool forks, move what they loaded at start-up out of the
# garbage collector's walks (project/heap.py).
INFERQ_GC_FREEZE = env_bool("INFERQ_GC_FREEZE", True)
# Answer an input byte-identical to one the same model version already answered from that result;
# SHARED: across users (off: only the caller's own earlier jobs count).
INFERQ_RESULT_CACHE = env_bool("INFERQ_RESULT_CACHE", True)
INFERQ_RESULT_CACHE_SHARED = env_bool("INFERQ_RESULT_CACHE_SHARED", True)
# Requests per token, as DRF rates ("6000/min"; empty or 0 turns a limit off), counted in the default cache.
# https://www.django-rest-framework.org/api-guide/throttling/
INFERQ_THROTTLE_RATES = {
    "submit": os.environ.get("INFERQ_THROTTLE_SUBMIT", "6000/min"),
    "api": os.environ.get("INFERQ_THROTTLE_API", "30000/min"),
}
# Seconds a web process remembers a token that authenticated (api/authentication.py); 0: query every request.
# A deleted token or deactivated user is refused at once by the process that changed it, elsewhere within this.
INFERQ_TOKEN_CACHE_SECONDS = env_int("INFERQ_TOKEN_CACHE_SECONDS", 5)
# /metrics is open unless this is set; then scrapers send `Authorization: Bearer <token>`.
INFERQ_METRICS_TOKEN = os.environ.get("INFERQ_METRICS_TOKEN", "")
# Finished jobs (and their results) older than this many days are deleted by beat (0: keep forever).
INFERQ_RESULT_RETENTION_DAYS = env_int("INFERQ_RESULT_RETENTION_DAYS", 30)
# TorchServe (/predictions) and KServe v2 (/v2) calls without a token run as one shared user when on.
INFERQ_COMPAT_ALLOW_ANONYMOUS = env_bool("INFERQ_COMPAT_ALLOW_ANONYMOUS", False)
INFERQ_COMPAT_ANONYMOUS_USERNAME = os.environ.get("INFERQ_COMPAT_ANONYMOUS_USERNAME", "compat-anonymous")
# Seconds a synchronous TorchServe/KServe call waits for its job(s) before answering 504 (at most 60).
INFERQ_COMPAT_TIMEOUT = env_int("INFERQ_COMPAT_TIMEOUT", 60)
# Most samples one KServe v2 request may carry (each becomes a job).
INFERQ_COMPAT_MAX_BATCH = env_int("INFERQ_COMPAT_MAX_BATCH", 64)
