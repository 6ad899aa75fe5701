"""`manage.py check --deploy` is clean with DEBUG off and secrets from the environment, and without a
secret the settings refuse to load at all."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "INFERQ_", "CELERY_"))}
    base.update({"DJANGO_SETTINGS_MODULE": "project.settings", "INFERQ_VAR_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=120)


def test_check_deploy_is_clean_with_debug_off(tmp_path: Path) -> None:
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                    DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_still_catches_a_weak_setting(tmp_path: Path) -> None:
    """The check is live, not silenced wholesale: turning HSTS off is reported."""
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                    DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_HSTS_SECONDS="0")

    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout


def test_without_a_secret_key_the_settings_refuse_to_load(tmp_path: Path) -> None:
    result = manage(tmp_path, "check", DJANGO_DEBUG="0")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_a_locally_generated_secret_file_is_used_when_the_environment_has_none(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text(secrets.token_urlsafe(50))

    result = manage(tmp_path, "shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY)",
                    DJANGO_DEBUG="0")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (tmp_path / "secret_key").read_text()
