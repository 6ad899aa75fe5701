"""Beat's scheduler: Celery's file-backed one, except that a schedule file cut short is started afresh.

Beat killed while writing its shelve leaves a file whose read raises EOFError, which Celery's own
PersistentScheduler does not expect: beat would then refuse to start, and no sweeper would run.
The schedule holds only "when did each entry last run", so losing it costs one early run.
"""

from __future__ import annotations

import pickle

from celery.beat import PersistentScheduler


class RecoveringScheduler(PersistentScheduler):
    def _create_schedule(self) -> None:
        try:
            super()._create_schedule()
        except (EOFError, ValueError, pickle.UnpicklingError) as exc:
            self._store = self._destroy_open_corrupted_schedule(exc)
            super()._create_schedule()
