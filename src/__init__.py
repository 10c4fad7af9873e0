"""credit-default-mlops: the pipeline, scoring, batch, monitoring and deploy code (the web layer is flask_api).

The one thing done on import: the OpenMP runtime under LightGBM (libgomp) reads how long
its idle threads spin at a barrier once, when the library loads. Its default, 300,000
spins, lets a 2-thread fit fight any CPU-bound neighbour for the cores on a shared machine;
no spinning at all (a passive policy) slows an idle pipeline by ~9 % (docs/performance.md). Every
entry point (DVC stages, CLIs, gunicorn workers) imports this package before LightGBM, so
the project asks here for a short spin, unless the environment already chose a policy.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
