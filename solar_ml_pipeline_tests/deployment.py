"""The README's deployment files as commands and environment, for the scale-out test and
benchmark: each starts its processes from exactly these files."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

DEPLOY = Path(__file__).parents[1] / "deploy"
UNIT_BIN = "/opt/solar-ml/.venv/bin"


def deploy_env(provided: Iterable[str]) -> dict[str, str]:
    """deploy/solar-ml.env without the variables the caller provides itself."""
    skip = set(provided)
    pairs = (line.split("=", 1) for line in (DEPLOY / "solar-ml.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs if key not in skip}


def unit_command(unit: str, instance: str = "") -> list[str]:
    """A unit file's ExecStart, run from this interpreter's environment."""
    line = next(line for line in (DEPLOY / "systemd" / unit).read_text().splitlines()
                if line.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=").replace("%i", instance).replace("%%", "%")
    return [part.replace(UNIT_BIN, str(Path(sys.executable).parent)) for part in command.split()]
