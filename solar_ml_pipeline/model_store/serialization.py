"""Model bytes: encoded and decoded in one place, so a format or compression choice changes
only these two functions (benchmarks/model_size.py swaps them to compare formats)."""

from __future__ import annotations

import io
import pickle
from typing import Any

PICKLE_PROTOCOL = 5


def serialize_model(model: object) -> bytes:
    return pickle.dumps(model, protocol=PICKLE_PROTOCOL)


# Versions pickled by the first release name its flat modules; they still load after the move.
MOVED_MODULES = {
    "solar_ml_pipeline.training": "solar_ml_pipeline.forecasting.training",
    "solar_ml_pipeline.features": "solar_ml_pipeline.forecasting.features",
    "solar_ml_pipeline.solar": "solar_ml_pipeline.forecasting.solar",
    "solar_ml_pipeline.simulator": "solar_ml_pipeline.readings.simulator",
}


class _MovedModulesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def deserialize_model(data: bytes) -> object:
    # Callers pass only bytes whose sha256 matched the meta written when we pickled them.
    return _MovedModulesUnpickler(io.BytesIO(data)).load()  # noqa: S301 - sha256 verified
