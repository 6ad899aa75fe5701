"""LOG_LEVELS: per-logger levels over LOG_LEVEL (project/settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from project.settings import logger_levels

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


def test_a_logger_logs_at_its_own_level_under_a_higher_root_level() -> None:
    # A fresh process configured from the environment, as a worker is: the named logger's INFO gets through,
    # another logger's INFO does not.
    code = ("import django, logging; django.setup(); "
            "logging.getLogger('inferq.worker').info('worker info'); logging.getLogger('inferq.jobs').info('job info')")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
           "LOG_LEVELS": "inferq.worker=INFO"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert out.returncode == 0, out.stderr
    assert "worker info" in out.stderr
    assert "job info" not in out.stderr
