"""The Celery app `solar-ml worker` runs (`celery -A` needs a module-level app)."""

from solar_ml_pipeline.config import load_settings
from solar_ml_pipeline.orchestration.instance import ensure_dagster_home
from solar_ml_pipeline.orchestration.workers import build_app

_settings = load_settings()
ensure_dagster_home(_settings)  # the worker opens the shared instance from DAGSTER_HOME
app = build_app(_settings)
