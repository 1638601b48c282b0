"""StreamFlow benchmarks: `make bench` (or `python bench/run.py --only ingest --sizes 7043 100000`).

Each benchmark runs in a child process on a fresh STREAMFLOW_HOME. The work is timed inside the child (imports
excluded); peak resident memory is the child's own (``wait4`` rusage, imports included). Results go to
``bench/results/<name>.json`` and to the table between the ``<!-- bench:<name> -->`` markers of the README.

One module per benchmark (``bench/ingest.py``, ``features.py``, ``models.py``, ``serving.py``, ``drift.py``,
``score.py``, ``demo.py``, ``containers.py``) and what they share (``bench/harness.py``); children run as
``python bench/run.py _child-name …``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the ``bench`` package from the checkout, not bench/ itself
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if not p or Path(p).resolve() != _here)]

from bench import containers, demo, drift, features, ingest, models, score, serving  # noqa: E402
from bench.harness import main  # noqa: E402

BENCHES = {
    "ingest": ingest.BENCH,
    "features": features.BENCH,
    "models": models.BENCH,
    "serving": serving.BENCH,
    "drift": drift.BENCH,
    "score": score.BENCH,
    "demo": demo.BENCH,
    "containers": containers.BENCH,
}
MODULES = (ingest, features, models, serving, drift, score, demo, containers)
CHILDREN = {name: fn for module in MODULES for name, fn in module.CHILDREN.items()}


if __name__ == "__main__":
    main(BENCHES, CHILDREN, __doc__)
