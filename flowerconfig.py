"""Flower's configuration, read from the working directory by `celery -A project flower`.

Flower shows every task and can revoke them or shut workers down, so it never runs open: without
FLOWER_BASIC_AUTH (`user:password`, which Flower itself reads) or FLOWER_AUTH (OAuth, with
FLOWER_AUTH_PROVIDER and the FLOWER_OAUTH2_* variables) it refuses to start.
https://flower.readthedocs.io/en/latest/auth.html
"""

import os

if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")):
    raise SystemExit("Flower refuses to start unauthenticated: set FLOWER_BASIC_AUTH=user:password "
                     "(or FLOWER_AUTH for OAuth).")
