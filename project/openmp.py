"""How long PyTorch's idle OpenMP threads spin before they sleep, set before torch is imported.

PyTorch's Linux wheels run their intra-op threads on GNU libgomp, whose threads, once a parallel region ends,
spin up to GOMP_SPINCOUNT times (300 000 by default) waiting for the next one before they sleep. On the
2-core AMD EPYC host of docs/benchmarks.md that is several milliseconds: through a batch's decoding, which
runs on other threads, and through the worker's writes and hand-offs between two batches, a second model
thread spun on a core the decoder threads, the web tier and Redis were waiting for (2.3-2.6 ms of CPU per
resnet50 image, 6% of the pool's). 3000 spins still bridge the gaps between the parallel regions of one
forward pass (a resnet50 image alone: 33.2 ms either way; 1000 spins, 33.8; none, 35.1). Read by libgomp
when it is loaded, so it is set when the Celery app is (`celery -A project` imports it before any torch),
and only when neither it nor OMP_WAIT_POLICY is set already: an operator's choice stands.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = "3000"


def set_spin_default(environ: MutableMapping[str, str] = os.environ) -> None:
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
