from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from solar_ml_pipeline.forecasting.promotion import Contender, decide_promotion

NAN = math.nan
EARLY = datetime(2026, 2, 23, 13, 0, tzinfo=UTC)
CUTOFF = datetime(2026, 2, 24, 13, 0, tzinfo=UTC)
LATE = datetime(2026, 2, 25, 13, 0, tzinfo=UTC)


def challenger(mae, cutoff=CUTOFF, persistence_mae=None):
    return Contender(version="20260224_130000_new", mae=mae, cutoff=cutoff,
                     persistence_mae=persistence_mae)


def champion(mae, cutoff=CUTOFF):
    return Contender(version="20260223_130000_old", mae=mae, cutoff=cutoff)


# (challenger, champion, threshold %, promoted, rule)
POLICY = [
    pytest.param(challenger(0.5), None, 10.0, True, "no_champion", id="no-current-model"),
    pytest.param(challenger(0.18), champion(0.20), 10.0, True, "better", id="lower-mae"),
    pytest.param(challenger(0.21), champion(0.20), 10.0, True, "within_threshold",
                 id="worse-within-threshold"),
    pytest.param(challenger(0.22), champion(0.20), 10.0, True, "within_threshold",
                 id="worse-exactly-at-threshold"),
    pytest.param(challenger(0.2201), champion(0.20), 10.0, False, "worse",
                 id="worse-beyond-threshold"),
    pytest.param(challenger(0.20), champion(0.20), 0.0, True, "within_threshold",
                 id="equal-mae-zero-threshold"),
    pytest.param(challenger(0.2001), champion(0.20), 0.0, False, "worse",
                 id="slightly-worse-zero-threshold"),
    pytest.param(challenger(0.0), champion(0.0), 10.0, True, "within_threshold",
                 id="both-perfect"),
    pytest.param(challenger(0.01), champion(0.20, cutoff=LATE), 10.0, False, "backfill",
                 id="backfill-never-promoted-even-if-better"),
    pytest.param(challenger(0.20, cutoff=LATE), champion(0.20, cutoff=CUTOFF), 10.0, True,
                 "within_threshold", id="newer-cutoff"),
    pytest.param(challenger(0.18), champion(0.20, cutoff=CUTOFF), 10.0, True, "better",
                 id="same-cutoff-rerun-may-promote"),
    pytest.param(challenger(0.5), champion(NAN), 10.0, True, "champion_unscored",
                 id="champion-could-not-be-scored"),
    pytest.param(challenger(0.5, cutoff=EARLY), champion(NAN), 10.0, False, "backfill",
                 id="backfill-over-unscored-champion"),
    pytest.param(challenger(NAN), champion(0.20), 10.0, False, "challenger_unscored",
                 id="challenger-nan"),
    pytest.param(challenger(math.inf), None, 10.0, False, "challenger_unscored",
                 id="challenger-inf-without-champion"),
]


@pytest.mark.parametrize(("new", "old", "threshold", "promoted", "rule"), POLICY)
def test_promotion_policy(new, old, threshold, promoted, rule):
    decision = decide_promotion(new, old, threshold)
    assert (decision.promoted, decision.rule) == (promoted, rule)


# (challenger, champion, promoted, rule) with the persistence gate on
GATED = [
    pytest.param(challenger(0.18, persistence_mae=0.25), champion(0.20), True, "better",
                 id="beats-persistence-and-champion"),
    pytest.param(challenger(0.18, persistence_mae=0.17), champion(0.20), False,
                 "loses_to_persistence", id="beats-champion-loses-to-persistence"),
    pytest.param(challenger(0.25, persistence_mae=0.25), None, False, "loses_to_persistence",
                 id="ties-persistence-no-champion"),
    pytest.param(challenger(0.10, persistence_mae=0.25), None, True, "no_champion",
                 id="first-model-beating-persistence"),
    pytest.param(challenger(0.10), None, False, "persistence_unknown",
                 id="persistence-unknown"),
    pytest.param(challenger(0.10, persistence_mae=NAN), champion(0.2), False,
                 "persistence_unknown", id="persistence-nan"),
    pytest.param(challenger(0.10, cutoff=EARLY, persistence_mae=0.25), champion(0.2), False,
                 "backfill", id="backfill-checked-before-gate"),
]


@pytest.mark.parametrize(("new", "old", "promoted", "rule"), GATED)
def test_promotion_policy_with_the_persistence_gate(new, old, promoted, rule):
    decision = decide_promotion(new, old, 10.0, require_beat_persistence=True)
    assert (decision.promoted, decision.rule) == (promoted, rule)


def test_persistence_is_ignored_without_the_gate():
    decision = decide_promotion(challenger(0.18, persistence_mae=0.10), champion(0.20), 10.0)
    assert decision.promoted


def test_reason_is_one_sentence_naming_both_versions_and_maes():
    decision = decide_promotion(challenger(0.2345), champion(0.2), 10.0)
    assert decision.reason == (
        "Not promoted: worse by more than 10%, challenger 20260224_130000_new MAE 0.2345 > "
        "limit 0.22 (champion 20260223_130000_old MAE 0.2)"
    )
    assert "\n" not in decision.reason


def test_backfill_reason_names_both_cutoffs():
    decision = decide_promotion(challenger(0.1, cutoff=EARLY), champion(0.2), 10.0)
    assert "2026-02-23T13:00:00+00:00 is older than the champion's 2026-02-24T13:00:00+00:00" \
        in decision.reason
    assert "MAE 0.1" in decision.reason and "MAE 0.2" in decision.reason


@pytest.mark.parametrize("threshold", [-1.0, NAN, math.inf])
def test_an_invalid_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold_percent"):
        decide_promotion(challenger(0.1), champion(0.2), threshold)


# -- the daylight persistence gate (issue 8) -------------------------------------------------

from solar_ml_pipeline.forecasting.promotion import daylight_gate_contender  # noqa: E402


def test_the_gate_compares_daylight_mae_when_given_not_the_all_hours_mae():
    # All-hours MAE looks fine (nights are easy); daylight MAE loses to persistence.
    gated = Contender(version="v", mae=0.10, cutoff=CUTOFF, persistence_mae=0.30, gate_mae=0.31)
    decision = decide_promotion(gated, None, 10.0, require_beat_persistence=True)
    assert (decision.promoted, decision.rule) == (False, "loses_to_persistence")
    assert "gate rows: MAE 0.31" in decision.reason


def test_a_daylight_gate_contender_takes_the_daylight_metrics():
    metrics = {"mae": 0.2, "daylight_mae": 0.4, "daylight_persistence_mae": 0.5}
    contender = daylight_gate_contender("v", metrics, CUTOFF)
    assert (contender.mae, contender.gate_mae, contender.persistence_mae) == (0.2, 0.4, 0.5)
    assert decide_promotion(contender, champion(0.3), 10.0,
                            require_beat_persistence=True).rule == "better"


def test_without_daylight_metrics_the_gate_refuses_rather_than_guesses():
    contender = daylight_gate_contender("v", {"mae": 0.2}, CUTOFF)
    decision = decide_promotion(contender, None, 10.0, require_beat_persistence=True)
    assert (decision.promoted, decision.rule) == (False, "persistence_unknown")


def test_an_unscored_daylight_mae_never_passes_the_gate():
    contender = Contender(version="v", mae=0.2, cutoff=CUTOFF, persistence_mae=0.5,
                          gate_mae=NAN)
    decision = decide_promotion(contender, None, 10.0, require_beat_persistence=True)
    assert (decision.promoted, decision.rule) == (False, "loses_to_persistence")


@pytest.mark.parametrize(("gate", "champion_gate_mae", "promoted", "rule"), [
    (True, 25.0, True, "champion_loses_to_persistence"),   # champion at/above persistence 20
    (True, 20.0, True, "champion_loses_to_persistence"),
    (True, 19.0, False, "worse"),                          # champion still beats persistence
    (True, None, False, "worse"),                          # its standing unknown: no change
    (False, 25.0, False, "worse"),                         # no gate, no persistence rule
])
def test_a_worse_challenger_that_passes_the_gate_replaces_a_champion_that_does_not(
        gate, champion_gate_mae, promoted, rule):
    new = Contender("new", mae=30.0, cutoff=CUTOFF, persistence_mae=20.0, gate_mae=10.0)
    old = Contender("old", mae=10.0, cutoff=EARLY, persistence_mae=20.0,
                    gate_mae=champion_gate_mae)
    decision = decide_promotion(new, old, 5.0, require_beat_persistence=gate)
    assert (decision.promoted, decision.rule) == (promoted, rule)
