"""The WSGI entry point as a web process loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LOAD_AND_REPORT = """
import json, sys
import threadpoolctl
import project.wsgi  # loads the URLconf too (numpy with it)
assert "numpy" in sys.modules, "numpy was not loaded: nothing to check"
print(json.dumps([p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no pool on one core either way")
def test_a_web_process_starts_no_openblas_thread_pool() -> None:
    """Its teardown at exit deadlocked now and then: a stopping web process hung until uWSGI killed it."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update({"DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_SECRET_KEY": "x" * 50})
    out = subprocess.run([sys.executable, "-c", LOAD_AND_REPORT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert pools and all(threads == 1 for threads in pools), pools


def test_a_web_process_imports_its_urlconf_while_it_loads_not_in_its_first_request() -> None:
    code = "import sys, project.wsgi; print(sorted(m for m in ('project.urls', 'api.views') if m not in sys.modules))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_SECRET_KEY": "x" * 50}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"  # nothing left for the first request to import


FROZEN_REPORT = """
import gc, json
import project.wsgi
from api import views
print(json.dumps({"frozen": gc.get_freeze_count(),
                  "view_walked": any(o is views.JobCreateApi for o in gc.get_objects()),
                  "new_walked": (lambda fresh: any(o is fresh for o in gc.get_objects()))([object()])}))
"""


@pytest.mark.parametrize("setting, frozen", [(None, True), ("0", False)])
def test_a_web_process_keeps_what_it_loaded_out_of_the_collectors_walks(setting: str | None, frozen: bool) -> None:
    """A full collection walked every object of Django, DRF and the URLconf: a tenth of a submit's CPU."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_SECRET_KEY": "x" * 50}
    env.pop("INFERQ_GC_FREEZE", None)
    if setting is not None:
        env["INFERQ_GC_FREEZE"] = setting
    out = subprocess.run([sys.executable, "-c", FROZEN_REPORT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["frozen"] > 50_000) is frozen, report
    assert report["view_walked"] is not frozen, report
    assert report["new_walked"] is True, report  # what requests allocate is still collected
