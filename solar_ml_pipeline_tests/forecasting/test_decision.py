"""The serving decision as a table: every branch the promotion step can take, with its reason."""

from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.forecasting.decision import Champion, decide_serving
from solar_ml_pipeline.forecasting.promotion import Contender

CUTOFF = datetime(2026, 3, 10, 13, tzinfo=UTC)
NAN = float("nan")


def challenger(*, mae=10.0, gate_mae=8.0, persistence=9.0, cutoff=CUTOFF):
    return Contender("20260310_130500_aaaaaa", mae, cutoff, persistence, gate_mae)


def champion(*, mae=10.5, gate_mae=7.0, persistence=9.0, note=None, unservable=False,
             cutoff=CUTOFF - timedelta(days=1)):
    return Champion(Contender("20260309_130500_bbbbbb", mae, cutoff, persistence, gate_mae),
                    note, unservable)


FALLBACK_CUTOFF = CUTOFF - timedelta(days=1)

# (case, challenger, champion, on_fallback, fallback_cutoff, gate, promoted, to_fallback,
#  serving, rule, words in the reason)
CASES = [
    ("first model passes the gate", challenger(), None, False, None, True,
     True, False, "model", "no_champion", ["Promoted: no current model"]),
    ("first model loses to persistence", challenger(gate_mae=9.5), None, False, None, True,
     False, True, "smart_persistence", "loses_to_persistence",
     ["does not beat persistence", "no model beats persistence, so it is served by smart persistence"]),
    ("persistence unknown, no champion", challenger(persistence=None), None, False, None, True,
     False, True, "smart_persistence", "persistence_unknown", ["persistence MAE unknown"]),
    ("champion unservable, challenger refused",
     challenger(gate_mae=9.5), champion(mae=NAN, gate_mae=None, note="file is damaged",
                                        unservable=True), False, None, True,
     False, True, "smart_persistence", "loses_to_persistence",
     ["(file is damaged)", "cannot be served, so it is displaced"]),
    ("champion loses to persistence, challenger refused",
     challenger(gate_mae=9.5), champion(gate_mae=9.8), False, None, True,
     False, True, "smart_persistence", "loses_to_persistence",
     ["loses to persistence too (daylight MAE 9.8", "displaced"]),
    ("champion beats persistence, challenger refused",
     challenger(gate_mae=9.5), champion(gate_mae=7.0), False, None, True,
     False, False, "model", "loses_to_persistence", ["stays in service (daylight MAE 7"]),
    ("champion loses to persistence, challenger passes but is worse",
     challenger(mae=20.0), champion(mae=10.0, gate_mae=9.8), False, None, True,
     True, False, "model", "champion_loses_to_persistence", ["the champion does not"]),
    ("champion unscored on features, challenger passes",
     challenger(), champion(mae=NAN, note="features lux are not available"), False, None, True,
     True, False, "model", "champion_unscored", ["(features lux are not available)"]),
    ("backfill under a champion", challenger(cutoff=CUTOFF - timedelta(days=5)), champion(),
     False, None, True, False, False, "model", "backfill", ["backfill"]),
    ("backfill over a fallback", challenger(cutoff=CUTOFF - timedelta(days=5)), None,
     True, FALLBACK_CUTOFF, True, False, False, "smart_persistence", "backfill",
     ["put the device on smart persistence"]),
    ("replacing a fallback", challenger(), None, True, FALLBACK_CUTOFF, True,
     True, False, "model", "no_champion", ["replaces the smart-persistence fallback of dev-1"]),
    ("refused while on a fallback", challenger(gate_mae=9.5), None, True, FALLBACK_CUTOFF, True,
     False, True, "smart_persistence", "loses_to_persistence", ["dev-1 stays on smart persistence"]),
    ("gate off, worse challenger", challenger(mae=20.0), champion(mae=10.0), False, None, False,
     False, False, "model", "worse", ["worse by more than 10%"]),
    ("gate off, no champion, loses to persistence", challenger(gate_mae=9.5), None, False, None,
     False, True, False, "model", "no_champion", ["no current model"]),
]


@pytest.mark.parametrize(
    "case, new, old, on_fallback, fallback_cutoff, gate, promoted, to_fallback, serving, rule, words",
    CASES, ids=[case[0] for case in CASES])
def test_serving_decision(case, new, old, on_fallback, fallback_cutoff, gate, promoted,
                          to_fallback, serving, rule, words):
    decision = decide_serving("dev-1", new, old, on_fallback=on_fallback,
                              fallback_cutoff=fallback_cutoff, threshold_percent=10.0,
                              require_beat_persistence=gate)
    assert (decision.promoted, decision.to_fallback, decision.serving, decision.rule) == (
        promoted, to_fallback, serving, rule)
    for word in words:
        assert word in decision.reason
    assert "\n" not in decision.reason


def test_nothing_serves_a_device_whose_only_challenger_cannot_be_scored_with_the_gate_off():
    decision = decide_serving("dev-1", challenger(mae=NAN), None, on_fallback=False,
                              fallback_cutoff=None, threshold_percent=10.0,
                              require_beat_persistence=False)
    assert (decision.promoted, decision.serving, decision.rule) == (False, None,
                                                                    "challenger_unscored")
