"""The built-in synthetic set: coloured shapes with compositional captions.

Each sample is one shape ("a small red circle at the top left") on a dark background, drawn at 4x
resolution and downsampled for anti-aliased edges. Everything follows from (seed, index), so the set
is identical on every machine. The colour, shape, size and position labels let evaluation check prompt
adherence.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "orange": (240, 140, 30),
    "purple": (140, 60, 200),
    "cyan": (40, 200, 210),
    "white": (235, 235, 235),
}
SIZE_FRACTION = {"small": 0.32, "large": 0.56}  # shape width as a fraction of the image side
POSITION_CENTER = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSample:
    index: int
    color: str
    shape: str
    size: str
    position: str
    image: np.ndarray  # uint8 [H, W, 3]

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.color} {self.shape} {where}"


def check_colors(colors: list[str]) -> None:
    unknown = [c for c in colors if c not in PALETTE]
    if unknown:
        raise ValueError(f"data.synthetic.colors: unknown colour(s) {unknown}; allowed: {sorted(PALETTE)}")


def render(
    color: str, shape: str, size: str, position: str, resolution: int, rng: random.Random
) -> np.ndarray:
    """Draw one shape; small jitter in size, position and shade keeps repeated combinations distinct."""
    big = resolution * SUPERSAMPLE
    background = rng.randint(10, 40)
    img = Image.new("RGB", (big, big), (background,) * 3)
    draw = ImageDraw.Draw(img)
    half = SIZE_FRACTION[size] * big * rng.uniform(0.9, 1.1) / 2
    cx, cy = (c * big + rng.uniform(-0.04, 0.04) * big for c in POSITION_CENTER[position])
    fill = tuple(int(np.clip(v + rng.randint(-15, 15), 0, 255)) for v in PALETTE[color])
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: circle, square, triangle")
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.uint8)


def generate(
    count: int,
    resolution: int,
    colors: list[str],
    shapes: list[str],
    sizes: list[str],
    positions: list[str],
    seed: int,
) -> Iterator[ShapeSample]:
    """Yield `count` samples; sample i depends only on (seed, i) and the attribute lists."""
    check_colors(colors)
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        attrs = (rng.choice(colors), rng.choice(shapes), rng.choice(sizes), rng.choice(positions))
        yield ShapeSample(i, *attrs, image=render(*attrs, resolution=resolution, rng=rng))
