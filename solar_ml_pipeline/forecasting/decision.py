"""What serves a device after an attempt: the challenger, the champion, or smart persistence.

A pure function over the promotion rules (`promotion.decide_promotion`) and the fallback:
with the persistence gate on, a challenger the gate refuses puts the device on smart
persistence when no champion still earns its place (none, one that loses to persistence in
daylight on the same rows, or one that cannot be served). A fallback pointer is no champion:
the next challenger that passes the gate serves, unless it is a backfill older than the
challenger that put the device on the fallback. The reason is one line, for the run log,
the pointer and the UI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from solar_ml_pipeline.forecasting import promotion
from solar_ml_pipeline.model_store.registry import SERVING_FALLBACK, SERVING_MODEL
from solar_ml_pipeline.storage.run_records import one_line

# Rules of a challenger refused by the persistence gate (promotion.py rule 3).
GATE_REFUSALS = ("loses_to_persistence", "persistence_unknown")


@dataclass(frozen=True)
class Champion:
    """The model in service, scored on the challenger's test window (`contender.mae` NaN and
    `note` saying why when it could not be scored; `unservable` when its file is missing,
    damaged or replaced, so it cannot serve at all)."""

    contender: promotion.Contender
    note: str | None = None
    unservable: bool = False


@dataclass(frozen=True)
class ServingDecision:
    promoted: bool
    to_fallback: bool
    serving: str | None  # SERVING_MODEL, SERVING_FALLBACK, or None: nothing serves the device
    rule: str
    reason: str


def number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None and math.isfinite(value) else "unknown"


def _fallback_backfill(fallback_cutoff: datetime | None,
                       challenger: promotion.Contender) -> promotion.Decision | None:
    """A challenger older than the one that put the device on smart persistence is a backfill."""
    if fallback_cutoff is None or challenger.cutoff >= fallback_cutoff:
        return None
    return promotion.Decision(
        False, f"Not promoted: backfill, cutoff {challenger.cutoff.isoformat()} is older than "
               f"the {fallback_cutoff.isoformat().replace('+00:00', 'Z')} of the challenger "
               f"that put the device on smart persistence (challenger {challenger.version} "
               f"MAE {number(challenger.mae)})", "backfill")


def decide_serving(device_id: str, challenger: promotion.Contender, champion: Champion | None, *,
                   on_fallback: bool, fallback_cutoff: datetime | None,
                   threshold_percent: float, require_beat_persistence: bool) -> ServingDecision:
    """The decision and its one-line reason; see the module docstring."""
    decision = _fallback_backfill(fallback_cutoff, challenger) if on_fallback else None
    old = champion.contender if champion else None
    if decision is None:
        decision = promotion.decide_promotion(
            challenger, old, threshold_percent, require_beat_persistence=require_beat_persistence)
    champion_beats = promotion.beats_persistence(old) if old else None
    unservable = bool(champion and champion.unservable)
    to_fallback = (require_beat_persistence and not decision.promoted
                   and decision.rule in GATE_REFUSALS
                   and (old is None or champion_beats is False or unservable))
    note = champion.note if champion else None
    reason = decision.reason if note is None else f"{decision.reason} ({note})"
    persistence = f"daylight persistence MAE {number(challenger.persistence_mae)}"
    if to_fallback and unservable:
        reason += (f"; champion {old.version} cannot be served, so it is displaced and "
                   f"{device_id} is served by smart persistence")
    elif to_fallback and old is not None:
        reason += (f"; champion {old.version} loses to persistence too (daylight MAE "
                   f"{number(old.gate_mae)}, {persistence}), so it is displaced and "
                   f"{device_id} is served by smart persistence")
    elif to_fallback:
        state = "stays on" if on_fallback else "no model beats persistence, so it is served by"
        reason += f"; {device_id} {state} smart persistence"
    elif old is not None and decision.rule in GATE_REFUSALS:
        standing = ("unknown" if champion_beats is None else
                    f"daylight MAE {number(old.gate_mae)}, {persistence}")
        reason += f"; champion {old.version} stays in service ({standing})"
    elif on_fallback and decision.promoted:
        reason += f"; replaces the smart-persistence fallback of {device_id}"
    if to_fallback or (on_fallback and not decision.promoted):
        serving = SERVING_FALLBACK
    elif decision.promoted or old is not None:
        serving = SERVING_MODEL
    else:
        serving = None
    return ServingDecision(decision.promoted, to_fallback, serving, decision.rule, one_line(reason))
