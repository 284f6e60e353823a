"""Hardware faults the simulator can inject, so data checks and drift detection can be tried
on readings whose faults are known (see simulator.simulate_readings(faults=...))."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

FAULT_KINDS = ("stuck", "lost_string")


def _epoch_ns(value: datetime, name: str) -> int:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return pd.Timestamp(utc).value


@dataclass(frozen=True)
class Fault:
    """A hardware fault injected into simulated readings, from `start` until `end` (None:
    for good). Naive datetimes are UTC.

    - ``stuck``: power and lux stay at the values they had at `start` (the first grid
      instant at or after it, whether or not that sample was lost), as a frozen sensor
      repeats its last reading.
    - ``lost_string``: power (and current) multiplied by `factor`, e.g. 0.5 when one of two
      strings is disconnected; voltage is unchanged.
    """

    kind: str
    start: datetime
    end: datetime | None = None
    factor: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is invalid: expected one of "
                             f"{', '.join(FAULT_KINDS)}")
        if self.end is not None and self.end_ns <= self.start_ns:
            raise ValueError(f"fault end {self.end} is not after its start {self.start}")
        if (isinstance(self.factor, bool) or not isinstance(self.factor, int | float)
                or not math.isfinite(self.factor) or self.factor < 0):
            raise ValueError(f"fault factor={self.factor!r} is invalid: expected a number, "
                             "0 or more (0.5 halves the power)")

    @property
    def start_ns(self) -> int:
        return _epoch_ns(self.start, "fault start")

    @property
    def end_ns(self) -> int | None:
        return None if self.end is None else _epoch_ns(self.end, "fault end")


# (instant in ns since the epoch) -> (power, lux) the simulator reports then, lost or not
ValuesAt = Callable[[int], tuple[float, float]]


def apply_fault(grid_ns: np.ndarray, columns: Mapping[str, np.ndarray], fault: Fault,
                step_ns: int, values_at: ValuesAt) -> None:
    """Change, in place, the readings of the grid instants the fault covers."""
    first_ns = -(-fault.start_ns // step_ns) * step_ns  # the first grid instant it covers
    covered = grid_ns >= first_ns
    if fault.end_ns is not None:
        covered &= grid_ns < fault.end_ns
    if not covered.any():
        return
    power, lux = columns["power"], columns["lux"]
    if fault.kind == "lost_string":
        power[covered] = np.round(power[covered] * fault.factor, 2)
        current = columns["current"]
        current[covered] = np.round(current[covered] * fault.factor, 4)
        return
    at = np.flatnonzero(grid_ns == first_ns)
    # in this grid, or (the fault began before the window's days) simulated on its own
    frozen = (power[at[0]], lux[at[0]]) if len(at) else values_at(first_ns)
    power[covered], lux[covered] = frozen
