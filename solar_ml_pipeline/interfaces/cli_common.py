"""What every `solar-ml` command module shares: exit codes, error types, output, arg types.

Kept apart from cli.py so command modules can import it without importing the entry point
(which runs as `__main__` under `python -m solar_ml_pipeline.interfaces.cli`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """The command ran but its work failed; the message is the one line to print."""


class UsageError(Exception):
    """The user's input is wrong; the message names the problem and the fix."""


def emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print the JSON payload with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_json_default, sort_keys=False))
    else:
        print(text() if callable(text) else text)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Parser(argparse.ArgumentParser):
    """argparse with the house error format: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"solar-ml: error: {message} (see {self.prog} --help)\n")


def _whole_number(text: str, minimum: int, wording: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number of {wording}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count / (1024 * 1024):.1f} MB"


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table: fixed digits, or '-' when absent."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"


def with_store(settings: Any, action: Callable[[Any], Any]) -> Any:
    """Run `action(store)` on a store opened for this command and closed after it."""
    from solar_ml_pipeline.storage import open_store  # looked up per call: tests swap backends

    store = open_store(settings)
    try:
        return action(store)
    finally:
        store.close()


def on_smart_persistence(shown: dict[str, Any]) -> bool:
    """Whether a pointer, listing, plan, run record or forecast says smart persistence serves."""
    from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK

    return shown.get("serving") == SERVING_FALLBACK
