"""One place that configures numba for the package; import it before defining parallel kernels.

numba's OpenMP threading layer leaves its worker threads spinning after a parallel region, where they
compete with torch's own OpenMP pool: a training step in the same process as LArTPC tiling ran 25x
slower (measured on 2 cores: 40 ms -> 1 s).  The workqueue layer parks its threads between regions and
is always available.  A user's explicit ``NUMBA_THREADING_LAYER`` is respected.
"""

from __future__ import annotations

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
