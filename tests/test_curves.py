"""Step logs that survive a resume: the rows of steps before the resumed step stay, the rest (and a
killed run's half line) go, and the file stays one readable table."""

import pandas as pd

from tasks.common.curves import Curve


def test_a_resumed_curve_keeps_earlier_steps_and_drops_later_and_broken_rows(tmp_path):
    path = tmp_path / "curves" / "loss.csv"
    first = Curve(path, ["loss"])
    for step in range(0, 10, 2):
        first.write(step, loss=1.0 / (step + 1))
    first.close()
    with path.open("a") as f:
        f.write("10,0.0")  # killed mid-line

    resumed = Curve(path, ["loss"], from_step=6)
    resumed.write(6, loss=0.5)
    resumed.close()
    table = pd.read_csv(path)
    assert table["step"].tolist() == [0, 2, 4, 6]
    assert table["loss"].tolist() == [1.0, 1 / 3, 0.2, 0.5]

    fresh = Curve(path, ["loss"])  # from step 0: a new run starts the file over
    fresh.close()
    assert pd.read_csv(path).empty
