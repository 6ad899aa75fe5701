"""The Celery application, configured from `celeryconfig.py`."""

import os

from celery import Celery

from project.openmp import set_spin_default

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Before the worker imports torch (its parent maps the weights before it forks): see project/openmp.py.
set_spin_default()

app = Celery("project")
app.config_from_object("celeryconfig")
