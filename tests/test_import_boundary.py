"""The web tier never imports torch: uWSGI would fork it into every web process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WEB_TIER = ("project.urls", "project.wsgi", "project.celery", "api.views", "api.services", "api.selectors",
            "api.admin", "api.inputs", "api.middleware", "tasks.inference", "workers.store")

PROBE = """
import importlib, json, os, sys
import django
django.setup()
for name in sys.argv[1:]:
    importlib.import_module(name)
watched = os.environ["WATCHED_MODULES"].split(",")
print(json.dumps({"found": sorted(m for m in watched if m in sys.modules),
                  "imported": [n for n in sys.argv[1:] if n in sys.modules]}))
"""


def import_in_fresh_interpreter(modules: tuple[str, ...], watched: tuple[str, ...]) -> dict[str, list[str]]:
    """Set Django up in a new interpreter, import `modules`, report which `watched` modules got loaded."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT),
           "WATCHED_MODULES": ",".join(watched)}
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_web_tier_imports_without_torch() -> None:
    report = import_in_fresh_interpreter(WEB_TIER, ("torch", "torchvision"))
    assert report["imported"] == list(WEB_TIER)
    assert report["found"] == []


def test_the_probe_detects_an_imported_module() -> None:
    """The check above can fail: a module pulled in by the web tier (numpy, by api.inputs) is reported."""
    report = import_in_fresh_interpreter(("api.inputs",), ("numpy", "torch"))
    assert report["found"] == ["numpy"]
