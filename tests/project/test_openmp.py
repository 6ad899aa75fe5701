"""project/openmp.py: PyTorch's idle OpenMP threads spin briefly, then sleep, unless the operator says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from project.openmp import SPIN_COUNT, set_spin_default

ROOT = Path(__file__).resolve().parents[2]


def test_the_spin_count_is_set_when_nothing_is() -> None:
    environ: dict[str, str] = {}
    set_spin_default(environ)
    assert environ == {"GOMP_SPINCOUNT": SPIN_COUNT}


@pytest.mark.parametrize("given", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_an_operators_choice_stands(given: dict[str, str]) -> None:
    environ = dict(given)
    set_spin_default(environ)
    assert environ == given


def test_the_celery_app_sets_it_before_anything_imports_torch() -> None:
    """`celery -A project worker` imports the app first; libgomp reads the variable once, when torch loads it."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, sys; import project; assert 'torch' not in sys.modules; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == SPIN_COUNT
