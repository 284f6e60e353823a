"""Atomic files and checksums, so a crash at any instant leaves the old file or the new one,
never a torn one, and bytes read back can be proven to be the bytes written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
from datetime import date, datetime
from pathlib import Path
from typing import Any

# Names of files an atomic write has not finished; retention removes those a crash left.
TEMP_PREFIX = ".tmp-"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write `path` so that a crash at any instant leaves the old file or the new one.

    overwrite=False links the finished temp file into place, which fails if the target exists,
    so an existing file is never replaced even by a concurrent writer (FileExistsError).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    # O_EXCL: never follow or reuse someone else's file; mode 0o666 lets the umask decide.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def _jsonable(value: Any, where: str) -> Any:
    """Strict JSON: numpy scalars become numbers, NaN and inf become null (JSON has neither)."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist(), where)
    raise TypeError(
        f"{where} has a {type(value).__name__}, which JSON cannot hold: "
        "convert it to str, int, float, list or dict"
    )


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(_jsonable(obj, "value"), indent=2, allow_nan=False) + "\n").encode()


def atomic_write_json(path: Path, obj: Any, *, overwrite: bool = True) -> None:
    atomic_write_bytes(path, json_bytes(obj), overwrite=overwrite)
