"""The pointer's history: every move recorded once, in order, and what served at any moment."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from solar_ml_pipeline.model_store.registry import (
    HISTORY_NAME,
    MOVE_DRIFT,
    MOVE_FALLBACK,
    MOVE_PROMOTION,
    MOVE_RESTORE,
    MOVE_ROLLBACK,
    MOVE_UNRECORDED,
    CorruptPointer,
    ModelRegistry,
    served_at,
)

DEVICE = "tracker01"
T0 = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def _version(i: int) -> str:
    return f"202603{i:02d}_120000_{i:06x}"


class Clock:
    """A clock the test moves, so each move has a known time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, hours: float = 1) -> datetime:
        self.now += timedelta(hours=hours)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path, clock) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "models")
    registry.clock = clock
    for i in (1, 2, 3):
        registry.save_version(DEVICE, _version(i), {"w": i}, {
            "trained_at": "2026-03-01T12:00:00Z", "model_type": "ridge",
            "metrics": {"mae": 0.1 * i}})
    return registry


def _fallback(registry, **kwargs):
    with registry.device_lock(DEVICE):
        return registry.set_fallback(DEVICE, reason="no model beats persistence", **kwargs)


def test_every_kind_of_move_is_one_line_in_order_with_what_it_replaced(registry, clock):
    registry.promote(DEVICE, _version(1), run_id="run-a")
    clock.tick()
    registry.promote(DEVICE, _version(2), run_id="run-b")
    clock.tick()
    _fallback(registry, challenger_version=_version(3), run_id="run-c")
    clock.tick()
    registry.rollback(DEVICE, run_id="run-d")
    clock.tick()
    with registry.device_lock(DEVICE):
        registry.set_pointer(DEVICE, _version(1), move=MOVE_DRIFT, run_id="run-e",
                             reason="realised skill below smart persistence")
    moves = registry.pointer_history(DEVICE)
    assert [(m["move"], m["version"], m["replaced"], m["run_id"]) for m in moves] == [
        (MOVE_PROMOTION, _version(1), None, "run-a"),
        (MOVE_PROMOTION, _version(2), _version(1), "run-b"),
        (MOVE_FALLBACK, None, _version(2), "run-c"),
        (MOVE_ROLLBACK, _version(2), "smart_persistence", "run-d"),
        (MOVE_DRIFT, _version(1), _version(2), "run-e"),
    ]
    assert [m["at"] for m in moves] == [
        (T0 + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for h in range(5)]
    assert moves[2]["serving"] == "smart_persistence"
    assert moves[4]["reason"] == "realised skill below smart persistence"


def test_served_at_names_what_served_at_any_moment_and_nothing_before_the_first(registry,
                                                                                clock):
    registry.promote(DEVICE, _version(1))
    clock.tick(24)
    _fallback(registry)
    clock.tick(24)
    registry.promote(DEVICE, _version(2))
    moves = registry.pointer_history(DEVICE)
    assert served_at(moves, T0 - timedelta(seconds=1)) is None
    assert served_at(moves, T0)["version"] == _version(1)
    assert served_at(moves, T0 + timedelta(hours=30))["serving"] == "smart_persistence"
    assert served_at(moves, T0 + timedelta(days=5))["version"] == _version(2)


def test_a_pointer_without_a_history_line_is_reported_as_unrecorded(registry, clock):
    registry.promote(DEVICE, _version(1))
    clock.tick()
    pointer = registry.promote(DEVICE, _version(2))
    # A crash after the pointer write and before the history append; or a first-release
    # store, whose pointers have no history at all.
    history = registry.history_path(DEVICE)
    history.write_text(history.read_text().splitlines(keepends=True)[0])
    moves = registry.pointer_history(DEVICE)
    assert [(m["move"], m["version"], m["replaced"]) for m in moves] == [
        (MOVE_PROMOTION, _version(1), None), (MOVE_UNRECORDED, _version(2), _version(1))]
    assert moves[-1]["at"] == pointer["updated_at"]
    history.unlink()
    assert [m["move"] for m in registry.pointer_history(DEVICE)] == [MOVE_UNRECORDED]


def test_a_torn_last_line_is_skipped_and_the_file_is_only_appended(registry, clock):
    registry.promote(DEVICE, _version(1))
    path = registry.history_path(DEVICE)
    with path.open("a") as handle:
        handle.write('{"at": "2026-03-01T1')  # a crash mid-append
    first_line = path.read_text().splitlines()[0]
    clock.tick()
    registry.promote(DEVICE, _version(2))
    assert path.read_text().splitlines()[0] == first_line
    assert [m["version"] for m in registry.pointer_history(DEVICE)] == [
        _version(1), _version(2)]


def test_restoring_an_earlier_pointer_is_a_move_dated_when_it_happened(registry, clock):
    registry.promote(DEVICE, _version(1))
    clock.tick()
    before = registry.promote(DEVICE, _version(2))
    clock.tick()
    registry.rollback(DEVICE)
    clock.tick()
    assert registry.restore_pointer(DEVICE, before) == before
    moves = registry.pointer_history(DEVICE)
    assert [(m["move"], m["version"]) for m in moves[-2:]] == [
        (MOVE_ROLLBACK, _version(1)), (MOVE_RESTORE, _version(2))]
    assert served_at(moves, clock.now)["version"] == _version(2)


def test_a_refused_pointer_write_leaves_no_history_line(registry):
    registry.promote(DEVICE, _version(1))
    pointer = registry.read_pointer(DEVICE)
    with pytest.raises(CorruptPointer, match="without a reason"), registry.device_lock(DEVICE):
        registry.set_fallback(DEVICE, reason=" ")
    assert registry.read_pointer(DEVICE) == pointer
    lines = registry.history_path(DEVICE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["version"] == _version(1)
    assert registry.history_path(DEVICE).name == HISTORY_NAME
