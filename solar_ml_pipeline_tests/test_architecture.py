"""The layers hold: each imports only those below it, the domain never imports Dagster, no
module grows past 500 lines and asset bodies stay thin wiring."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "solar_ml_pipeline"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_are_kept():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module, line", [
    ("forecasting/training.py", "import dagster\n"),
    ("model_store/pointer.py", "from solar_ml_pipeline.orchestration import jobs\n"),
    ("storage/base.py", "from solar_ml_pipeline.forecasting import solar\n"),
])
def test_a_domain_module_importing_upwards_breaks_the_contract(tmp_path, module, line):
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(PACKAGE, copy / "solar_ml_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "solar_ml_pipeline" / module
    target.write_text(line + target.read_text())
    done = _lint_imports(copy)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout


def test_no_module_in_the_package_passes_500_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}


def _asset_bodies(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr in ("asset", "multi_asset"):
                    yield node


def test_asset_bodies_are_at_most_40_lines():
    bodies = {}
    for path in (PACKAGE / "orchestration").glob("*.py"):
        for node in _asset_bodies(ast.parse(path.read_text())):
            bodies[node.name] = node.end_lineno - node.body[0].lineno + 1
    assert "retrain" in set(bodies)  # the one step behind the four retraining assets
    assert {name: n for name, n in bodies.items() if n > 40} == {}
