import importlib

import dagster as dg
import yaml

from solar_ml_pipeline.orchestration.definitions import build_definitions

ASSETS = ["raw_readings", "feature_frame", "model_version", "promotion_decision"]


def test_definitions_are_loadable_as_dagster_validates_them(settings):
    dg.Definitions.validate_loadable(build_definitions(settings))


def test_workspace_yaml_names_the_package_attribute_that_holds_the_definitions():
    import pathlib

    workspace = yaml.safe_load((pathlib.Path(__file__).parents[2] / "workspace.yaml").read_text())
    entry = workspace["load_from"][0]["python_package"]
    package = importlib.import_module(entry["package_name"])
    assert isinstance(getattr(package, entry["attribute"]), dg.Definitions)


def test_lineage_runs_from_raw_readings_to_promotion_decision(settings):
    graph = build_definitions(settings).resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(ASSETS) <= keys
    parents = {name: {p.to_user_string() for p in graph.get(dg.AssetKey(name)).parent_keys}
               for name in ASSETS}
    assert parents["feature_frame"] == {"raw_readings"}
    assert parents["model_version"] == {"feature_frame"}
    assert parents["promotion_decision"] == {"model_version", "feature_frame"}


def test_every_asset_explains_itself_in_the_ui(settings):
    graph = build_definitions(settings).resolve_asset_graph()
    for name in ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.description and len(node.description) > 40, name
        assert node.owners == ["team:solar-ml"], name
        assert node.group_name == "retraining", name
        assert node.kinds, name


def test_job_schedule_and_sensors_have_descriptions(settings):
    defs = build_definitions(settings)
    repo = defs.get_repository_def()
    for schedule in repo.schedule_defs:
        assert schedule.description, schedule.name
    for sensor in repo.sensor_defs:
        assert sensor.description, sensor.name
    assert defs.resolve_job_def("retrain_job").description


def test_the_code_location_passes_dagster_definitions_validate(env_for_subprocess, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "definitions", "validate", "-m",
                           "solar_ml_pipeline.definitions"], env=env_for_subprocess,
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All code locations passed validation" in done.stderr + done.stdout
