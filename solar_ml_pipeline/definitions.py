"""The Dagster code location (`dagster dev -m solar_ml_pipeline.definitions`), from the
environment's settings."""

from solar_ml_pipeline.config import load_settings
from solar_ml_pipeline.orchestration.definitions import build_definitions

defs = build_definitions(load_settings())
