"""The registry gate's decision (tasks/evaluate/champion.py); registering with MLflow is in the e2e tests."""

from types import SimpleNamespace

import pytest

from tasks.common.config import GateConfig
from tasks.evaluate.champion import JUDGE_TAG, SETTINGS_TAG, decide, metric_tag

ALIKE = {JUDGE_TAG: "judge-a", SETTINGS_TAG: "settings-a"}


def version(number: str, value: float, metric: str = "r_precision_judge", **tags: str):
    return SimpleNamespace(version=number, tags={**ALIKE, metric_tag(metric): repr(value), **tags})


def never(_: str) -> float:
    raise AssertionError("the champion was measured alike: its stored value must be used")


def test_a_first_model_becomes_champion_when_it_clears_the_floor():
    assert decide(GateConfig(floor=0.2), 0.5, None, ALIKE, never).promote
    missed = decide(GateConfig(floor=0.2), 0.1, None, ALIKE, never)
    assert not missed.promote and "floor" in missed.reason


def test_a_model_under_the_floor_is_told_beside_the_champion_it_leaves_in_place():
    verdict = decide(GateConfig(floor=0.2), 0.1, version("3", 0.9), ALIKE, never)
    assert not verdict.promote and (verdict.champion, verdict.champion_value) == ("3", 0.9)
    assert "misses the floor" in verdict.reason and "champion v3's 0.9000 stays" in verdict.reason


@pytest.mark.parametrize(("new", "promote"), [(0.61, True), (0.55, False), (0.3, False)])
def test_champion_moves_only_for_a_gain_larger_than_min_delta(new, promote):
    verdict = decide(GateConfig(min_delta=0.05, floor=0.1), new, version("3", 0.5), ALIKE, never)
    assert verdict.promote is promote
    assert (verdict.champion, verdict.champion_value) == ("3", 0.5)


def test_lower_is_better_for_distances():
    gate = GateConfig(metric="fd_judge", floor=1.0)
    champion = version("2", 0.4, metric="fd_judge")
    assert decide(gate, 0.3, champion, ALIKE, never).promote
    assert not decide(gate, 0.5, champion, ALIKE, never).promote
    assert not decide(gate, 1.5, None, ALIKE, never).promote  # over the worst acceptable distance


def test_a_champion_judged_otherwise_is_measured_again():
    measured = []

    def measure(number: str) -> float:
        measured.append(number)
        return 0.7

    champion = version("4", 0.2, **{JUDGE_TAG: "judge-of-older-data"})
    verdict = decide(GateConfig(), 0.6, champion, ALIKE, measure)
    assert measured == ["4"] and not verdict.promote and verdict.champion_value == 0.7
    assert "measured again" in verdict.reason
