"""credit-default-mlops: the pipeline, scoring, batch, monitoring and deploy code (the web layer is flask_api).

The one thing done on import: the OpenMP runtime under LightGBM reads its wait policy
once, when the library loads, and by default its idle threads spin at every barrier.
On a shared machine a spinning thread competes with whoever holds the other core, and
a 2-thread fit slows down by an order of magnitude. Every entry point (DVC stages, CLIs,
gunicorn workers) imports this package before LightGBM, so the project asks here for
threads that sleep while they wait, unless the environment already chose a policy.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
