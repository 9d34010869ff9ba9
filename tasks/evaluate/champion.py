"""The registry's gate: alias `champion` moves to a new version only when it beats the current champion on
`eval.gate.metric` by more than `min_delta` and clears the floor; otherwise the new version is
`challenger`. A first model becomes champion when it clears the floor.

Numbers compare only when measured alike: by the same judge (its key) with the same evaluation settings.
A champion measured otherwise (new data, new eval params) is measured again now, by the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infra.tracking import CHALLENGER, CHAMPION
from tasks.common.config import GATED_METRICS, GateConfig

JUDGE_TAG, SETTINGS_TAG = "ldmflow.judge_key", "ldmflow.eval_settings"


def metric_tag(name: str) -> str:
    return f"metric.{name}"


@dataclass(frozen=True)
class Verdict:
    promote: bool
    metric: str
    value: float
    champion: str | None  # the champion's version before this decision
    champion_value: float | None  # its value, measured like `value`
    reason: str

    @property
    def alias(self) -> str:
        return CHAMPION if self.promote else CHALLENGER

    def __str__(self) -> str:
        return f"{self.alias}: {self.reason}"


def _better(metric: str, a: float, b: float, by: float) -> bool:
    return a > b + by if GATED_METRICS[metric] == "higher" else a < b - by


def _clears(metric: str, value: float, floor: float) -> bool:
    return value >= floor if GATED_METRICS[metric] == "higher" else value <= floor


def decide(
    gate: GateConfig,
    value: float,
    champion,  # the champion's ModelVersion, or None
    measured_alike: dict[str, str],  # the judge key and settings this value was measured with
    measure_champion: Callable[[str], float],  # champion version -> its value, measured now
) -> Verdict:
    metric = gate.metric
    old, versus, how = None, "", ""
    if champion is not None:
        tags = champion.tags or {}
        alike = all(tags.get(k) == v for k, v in measured_alike.items()) and metric_tag(metric) in tags
        old = float(tags[metric_tag(metric)]) if alike else measure_champion(champion.version)
        how = "" if alike else " (measured again now: it was judged by another judge or settings)"
        versus = f"champion v{champion.version}'s {old:.4f}"
    if not _clears(metric, value, gate.floor):
        worst = "at least" if GATED_METRICS[metric] == "higher" else "at most"
        kept = f"; {versus} stays{how}" if versus else ""
        return Verdict(False, metric, value, champion and champion.version, old,
                       f"{metric} {value:.4f} misses the floor ({worst} {gate.floor}){kept}")  # fmt: skip
    if champion is None:
        reason = f"first model to clear the floor ({metric} {value:.4f})"
        return Verdict(True, metric, value, None, None, reason)
    promote = _better(metric, value, old, gate.min_delta)
    verb = "beats" if promote else "does not beat"
    margin = "" if promote else f" by more than {gate.min_delta}"
    return Verdict(
        promote, metric, value, champion.version, old, f"{metric} {value:.4f} {verb} {versus}{margin}{how}"
    )
