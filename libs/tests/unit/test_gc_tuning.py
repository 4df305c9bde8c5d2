"""A serving process's collector: what it loaded is frozen, young objects collected less often."""

from __future__ import annotations

import gc

import pytest

from libs.infra.service import GC_THRESHOLD, tune_garbage_collector

pytestmark = pytest.mark.unit


def test_a_serving_process_freezes_what_it_loaded_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLD
    gc.unfreeze()
    loaded: list[list[int]] = [[] for _ in range(1000)]  # containers the collector tracks, alive after start
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLD
        assert GC_THRESHOLD[0] > before[0]
        assert gc.get_freeze_count() >= len(loaded)
        # collection still works: a cycle made after the freeze is found
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
