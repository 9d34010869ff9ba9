"""The sampling config of models registered before the pipeline folder (models/sampler/pipeline.py
reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_sampling_config(
    path: str | Path, scheduler_config: dict[str, Any], max_length: int, clip_skip: int = 0
) -> None:
    """Write what sampling needs besides the weights: the noise schedule, the token length and the text
    encoder layer read."""
    payload = {
        "scheduler": dict(scheduler_config),
        "max_length": int(max_length),
        "clip_skip": int(clip_skip),
    }
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
