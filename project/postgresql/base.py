"""Django's PostgreSQL backend, without the health check's round trip for a connection that has just worked.

With `CONN_HEALTH_CHECKS` (on: a restarted database must not fail the first request on each kept
connection) Django runs `SELECT 1` before the first query of every request. On the 2-core host that was a
fifth of a status poll: over uWSGI as configured, polls ran at 0.27–0.29 of a trivial view's rate with the
check and 0.34–0.36 without it, submits at 0.14–0.15 against 0.17–0.18 (two stacks each, three rounds).

Here a connection that served a request without an error is trusted for `HEALTHY_FOR_S` seconds: the next
request within that time skips the check. One left idle longer is checked as before, so a database
restarted while the web tier was quiet costs no request; one restarted in the second after a connection's
last use costs that connection's next request (answered 503), as it would without health checks, and the
connection is replaced at the end of it.
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base

# How long after a request it served without an error a connection is used without a health check.
HEALTHY_FOR_S = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_done: bool
    _healthy_at = float("-inf")

    def close_if_health_check_failed(self) -> None:
        if (self.connection is not None and self.health_check_enabled and not self.health_check_done
                and time.monotonic() - self._healthy_at < HEALTHY_FOR_S):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def close_if_unusable_or_obsolete(self) -> None:
        # Called as each request starts and ends. `health_check_done` is set once a request has used the
        # connection (checked, or trusted above); with no error since, it has just worked.
        if self.connection is not None and self.health_check_done and not self.errors_occurred:
            self._healthy_at = time.monotonic()
        super().close_if_unusable_or_obsolete()

    def close(self) -> None:
        self._healthy_at = float("-inf")
        super().close()
