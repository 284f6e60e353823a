"""solar_ml_pipeline: keeps one 15-minute power forecast per solar tracker fresh.

The Dagster code location is `solar_ml_pipeline.definitions.defs`; it is imported lazily here
(PEP 562) so that `workspace.yaml`'s `python_package` entry finds it while the CLI stays fast.
"""

import os
from typing import Any

# OpenMP threads (scikit-learn's gradient boosting) spin while waiting by default; on a busy
# 2-core machine (webserver, daemon and runs side by side) that made a 1 s fit take 20 s.
# Passive waiting must be set before the OpenMP runtime loads, so it is set on package import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str) -> Any:
    if name == "defs":
        from solar_ml_pipeline.definitions import defs

        return defs
    raise AttributeError(name)
