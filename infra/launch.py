"""Where this process stands in a distributed launch (torchrun, `accelerate launch`), from the environment
they set; torch-free, so the CLI can ask before importing anything heavy."""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched_distributed() -> bool:
    return world_size() > 1
