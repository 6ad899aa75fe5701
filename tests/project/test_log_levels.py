"""LOG_LEVELS: per-logger levels over LOG_LEVEL (project/settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.settings import celery_task_line_level, logger_levels

ROOT = Path(__file__).resolve().parents[2]


def test_pairs_become_logger_entries() -> None:
    assert logger_levels(" inferq.worker=info, celery = WARNING,") == {
        "inferq.worker": {"level": "INFO"}, "celery": {"level": "WARNING"}}
    assert logger_levels("") == {}


@pytest.mark.parametrize("text", ["inferq.worker", "inferq.worker=LOUD", "=INFO"])
def test_a_bad_pair_is_named(text: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="LOG_LEVELS") as caught:
        logger_levels(text)
    assert repr(text.strip()) in str(caught.value)


def _stderr_of_fresh_process(*calls: str, **env: str) -> str:
    """What a fresh process configured from the environment, as a worker is, writes for these logging calls
    (`LOG_LEVEL` and `LOG_LEVELS` as given here, else unset)."""
    code = "import django, logging; django.setup(); " + "; ".join(calls)
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", **env}
    for name in ("LOG_LEVEL", "LOG_LEVELS"):
        if name not in env:
            full.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_a_logger_logs_at_its_own_level_under_a_higher_root_level() -> None:
    # The named logger's INFO gets through, another logger's INFO does not.
    err = _stderr_of_fresh_process("logging.getLogger('inferq.worker').info('worker info')",
                                   "logging.getLogger('inferq.jobs').info('job info')",
                                   LOG_LEVEL="WARNING", LOG_LEVELS="inferq.worker=INFO")

    assert "worker info" in err
    assert "job info" not in err


@pytest.mark.parametrize(("level", "expected"), [("INFO", "WARNING"), ("info", "WARNING"), ("WARNING", "WARNING"),
                                                 ("ERROR", "ERROR"), ("CRITICAL", "CRITICAL"), ("DEBUG", "DEBUG")])
def test_celerys_per_task_lines_are_shown_at_debug_and_otherwise_from_warning(level: str, expected: str) -> None:
    assert celery_task_line_level(level) == expected


CELERY_AND_JOB_LINES = ("logging.getLogger('celery.app.trace').info('Task t[1] succeeded in 0.01s')",
                        "logging.getLogger('celery.worker.strategy').info('Task t[1] received')",
                        "logging.getLogger('celery.app.trace').error('Task t[2] raised unexpected')",
                        "logging.getLogger('inferq.jobs').info('job succeeded')")


def test_at_the_default_level_a_job_is_logged_by_inferq_not_by_celery_per_task() -> None:
    err = _stderr_of_fresh_process(*CELERY_AND_JOB_LINES)

    assert "job succeeded" in err
    assert "received" not in err and "succeeded in" not in err
    assert "Task t[2] raised unexpected" in err  # a failure still is


def test_log_levels_bring_celerys_per_task_lines_back() -> None:
    err = _stderr_of_fresh_process(*CELERY_AND_JOB_LINES,
                                   LOG_LEVELS="celery.app.trace=INFO,celery.worker.strategy=INFO")

    assert "Task t[1] received" in err and "Task t[1] succeeded in 0.01s" in err
