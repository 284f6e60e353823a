"""Whether a freshly trained model (challenger) replaces the one in service (champion).

Both MAEs must come from the same test window (the challenger's), so the comparison is fair.
Rules, first match wins:

1. challenger MAE not finite: not promoted (a model of unknown quality never serves, even
   when there is no champion);
2. champion trained on a later cutoff (this is a backfill): not promoted; an equal cutoff
   (a re-run of the same period) may promote;
3. persistence gate, only with `require_beat_persistence`: the challenger must have a lower
   MAE than persistence on its test window (the caller chooses which window, e.g. daylight;
   `gate_mae` is then the challenger's MAE on the same rows, `mae` when not given);
4. no champion: promoted;
5. champion MAE unknown (it could not be scored on this window): promoted;
6. challenger MAE lower: promoted;
7. challenger MAE at most `threshold_percent` above the champion's: promoted;
8. persistence gate on and the champion loses to persistence on the same gate rows (its
   `gate_mae` at or above `persistence_mae`): promoted, the challenger having passed the gate;
9. otherwise not promoted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Contender:
    """A model in the decision: its MAE on the challenger's test window and its data cutoff
    (tz-aware). `persistence_mae`: persistence on the gate's rows of that window, and
    `gate_mae` the model's MAE on the same rows (e.g. both daylight-only, see
    `daylight_gate_contender`); without `gate_mae` the gate compares `mae`."""

    version: str
    mae: float
    cutoff: datetime
    persistence_mae: float | None = None
    gate_mae: float | None = None


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    rule: str


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _mae(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "unknown"


def beats_persistence(contender: Contender) -> bool | None:
    """Whether the contender's gate MAE is below persistence's on the same rows; None when
    either is unknown."""
    mae = contender.mae if contender.gate_mae is None else contender.gate_mae
    if not (_known(mae) and _known(contender.persistence_mae)):
        return None
    return mae < contender.persistence_mae  # type: ignore[operator]


def decide_promotion(challenger: Contender, champion: Contender | None, threshold_percent: float,
                     *, require_beat_persistence: bool = False) -> Decision:
    """Apply the promotion rules of the module docstring; `reason` is one sentence."""
    if not (math.isfinite(threshold_percent) and threshold_percent >= 0):
        raise ValueError(f"threshold_percent={threshold_percent!r} is invalid: expected >= 0")
    new = f"challenger {challenger.version} MAE {_mae(challenger.mae)}"
    old = f"champion {champion.version} MAE {_mae(champion.mae)}" if champion else ""

    if not _known(challenger.mae):
        return Decision(False, f"Not promoted: the challenger could not be scored ({new})",
                        "challenger_unscored")
    if champion is not None and challenger.cutoff < champion.cutoff:
        return Decision(
            False,
            f"Not promoted: backfill, cutoff {challenger.cutoff.isoformat()} is older than the "
            f"champion's {champion.cutoff.isoformat()} ({new}, {old})",
            "backfill",
        )
    if require_beat_persistence:
        persistence = challenger.persistence_mae
        if persistence is None or not math.isfinite(persistence):
            return Decision(False, f"Not promoted: persistence MAE unknown, so the challenger "
                                   f"cannot be shown to beat it ({new})", "persistence_unknown")
        if not beats_persistence(challenger):
            gate_mae = challenger.gate_mae
            where = "" if gate_mae is None else f" (gate rows: MAE {_mae(gate_mae)})"
            return Decision(False, f"Not promoted: {new}{where} does not beat persistence MAE "
                                   f"{_mae(persistence)} on the same test window",
                            "loses_to_persistence")
    if champion is None:
        return Decision(True, f"Promoted: no current model ({new})", "no_champion")
    if not _known(champion.mae):
        return Decision(True, f"Promoted: the champion could not be scored on the challenger's "
                              f"test window ({new}, {old})", "champion_unscored")
    if challenger.mae < champion.mae:
        return Decision(True, f"Promoted: better, {new} < {old}", "better")
    limit = champion.mae * (1 + threshold_percent / 100)
    if challenger.mae <= limit:
        return Decision(True, f"Promoted: within {threshold_percent:g}% threshold, {new} <= "
                              f"limit {_mae(limit)} ({old})", "within_threshold")
    if require_beat_persistence and beats_persistence(champion) is False:
        return Decision(True, f"Promoted: the challenger beats persistence and the champion "
                              f"does not (champion gate MAE {_mae(champion.gate_mae)} >= "
                              f"persistence MAE {_mae(champion.persistence_mae)}), although "
                              f"{new} > limit {_mae(limit)} ({old})",
                        "champion_loses_to_persistence")
    return Decision(False, f"Not promoted: worse by more than {threshold_percent:g}%, {new} > "
                           f"limit {_mae(limit)} ({old})", "worse")


def daylight_gate_contender(version: str, metrics: Mapping[str, Any],
                            cutoff: datetime) -> Contender:
    """The challenger as the persistence gate should see it: daylight MAE against daylight
    persistence MAE (Evaluation.as_metrics names), the all-hours MAE for the champion
    comparison. Metrics without daylight scores (a frame built without a site) leave the
    gate's persistence unknown, so a gated decision refuses rather than guesses."""

    def number(name: str) -> float | None:
        value = metrics.get(name)
        return float(value) if value is not None else None

    return Contender(version=version, mae=float(metrics["mae"]), cutoff=cutoff,
                     persistence_mae=number("daylight_persistence_mae"),
                     gate_mae=number("daylight_mae"))
