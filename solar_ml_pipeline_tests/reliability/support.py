"""What the reliability tests share: the real `solar-ml` entry point and a model-store audit.

The audit re-hashes files with hashlib instead of trusting the registry's own answers, so a
registry bug cannot hide itself.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

from solar_ml_pipeline.model_store.registry import ModelRegistry, is_fallback
from solar_ml_pipeline.storage import Store

CLI = (sys.executable, "-m", "solar_ml_pipeline.interfaces.cli")


def solar_ml(env: dict[str, str], *args: str, timeout: float = 180,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `solar-ml ARGS` as a user would, in its own interpreter."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int,
                          *fragments: str) -> str:
    """The house error shape: the exit code, one `solar-ml: error:` line, no traceback."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == exit_code, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("solar-ml: error: "), shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    for fragment in fragments:
        assert fragment in lines[0], shown
    return lines[0]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unused_port() -> int:
    """A loopback port nothing listens on now (bound, then released): to serve on or to fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def audit_model_store(registry: ModelRegistry, store: Store, device_id: str) -> list[str]:
    """Assert the device's model store is whole; returns its complete versions, oldest first.

    - every complete version's pkl hashes to its meta's sha256 and loads (verified);
    - a pkl under its final name without a meta (a save cut short) is a whole pickle, never a
      torn one, and is not listed as a version; every meta file is whole JSON;
    - the pointer, if any, parses and names a complete version whose bytes hash to its sha256,
      or is a smart-persistence fallback whose previous version, if any, is complete;
    - every `success` record of a retrain names a complete version.
    """
    complete = {meta["version"]: meta for meta in registry.list_versions(device_id)}
    for version, meta in complete.items():
        assert sha256_of(registry.model_path(device_id, version)) == meta["sha256"], version
        registry.load_model(device_id, version)
    folder = registry.versions_dir(device_id)
    if folder.is_dir():
        for path in folder.glob("model_*.pkl"):
            version = path.name.removeprefix("model_").removesuffix(".pkl")
            if version not in complete:
                # bytes this test's own runs wrote: safe to unpickle, and a torn file would fail
                pickle.loads(path.read_bytes())  # noqa: S301 - test-made bytes
        for path in folder.glob("model_*_meta.json"):
            json.loads(path.read_bytes())
    pointer = registry.read_pointer(device_id)
    if is_fallback(pointer):
        previous = pointer.get("previous_version")
        assert previous is None or previous in complete, (
            f"fallback pointer keeps {previous} for rollback, complete: {sorted(complete)}")
    elif pointer is not None:
        version = pointer["version"]
        assert version in complete, f"pointer names {version}, complete: {sorted(complete)}"
        assert sha256_of(registry.model_path(device_id, version)) == pointer["sha256"]
        assert complete[version]["sha256"] == pointer["sha256"]
        registry.load_model(device_id, version, expected_sha256=pointer["sha256"])
    for record in store.list_runs(device_id=device_id, limit=500).runs:
        if record.get("status") == "success" and record.get("kind", "retrain") == "retrain":
            assert record.get("version") in complete, (
                f"run {record['run_id']} is recorded as success for version "
                f"{record.get('version')}, which is not complete on disk")
    return sorted(complete)
