"""Which Redis to use: REDIS_URL, else the embedded one `make run` started (its URL in var/redis_url).

Read by both Django settings and celeryconfig, so management commands run beside `make run`
(e.g. `manage.py submit_bulk`) find the same Redis without being told.
"""

import os
from pathlib import Path

DEFAULT = "redis://127.0.0.1:6379/0"


def embedded_url_file(var_dir: str | os.PathLike[str] | None = None) -> Path:
    base = var_dir or os.environ.get("INFERQ_VAR_DIR") or Path(__file__).resolve().parent.parent / "var"
    return Path(base) / "redis_url"


def redis_url() -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    try:
        return embedded_url_file().read_text().strip() or DEFAULT
    except OSError:
        return DEFAULT
