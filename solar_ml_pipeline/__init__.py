"""solar_ml_pipeline: keeps one 15-minute power forecast per solar tracker fresh.

The Dagster code location is `solar_ml_pipeline.definitions.defs`; it is imported lazily here
(PEP 562) so that `workspace.yaml`'s `python_package` entry finds it while the CLI stays fast.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "defs":
        from solar_ml_pipeline.definitions import defs

        return defs
    raise AttributeError(name)
