"""Standard FID and KID, in Inception-v3's 2048-d pool features as torchmetrics computes them, when
`eval.inception_weights` names a local weights file (torch-fidelity's `pt_inception-2015-12-05` state
dict, the one FID is defined with); nothing is downloaded. Named `fid_inception` and `kid_inception`, so
nobody mistakes them for the judge's distances, and framed like those by the real-vs-real floor.

It needs the `inception` extra (torch-fidelity, which imports torchvision): torchmetrics reaches the
network through it. A torchvision built for another torch fails to import; the error says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.judges.judge_metrics import frechet_and_kid
from models.sampler.device import pick_device
from tasks.evaluate.scores import ImageSet

FEATURES = "2048"  # the pool features FID is defined on


def _network(weights: Path) -> torch.nn.Module:
    if not weights.is_file():
        raise ValueError(f"eval.inception_weights: {weights} is not a file")
    try:
        torch.load(weights, map_location="cpu", weights_only=True)  # torch-fidelity unpickles it in full
    except Exception as err:
        raise ValueError(f"eval.inception_weights: {weights} is not a plain state dict ({err})") from err
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3("inception-v3-compat", [FEATURES], str(weights))
    except (ImportError, RuntimeError) as err:  # torchvision's own ops fail as a RuntimeError
        raise ValueError(
            "eval.inception_weights needs the inception extra: pip install 'ldmflow[inception]' "
            f"(torch-fidelity, with a torchvision built for torch {torch.__version__}): {err}"
        ) from err


class InceptionReference:
    """The Inception network and the real images' features, computed once: held-out images, and the
    caption-matched train images that give the floor."""

    def __init__(self, weights: str, held_out: ImageSet, train: ImageSet, seed: int) -> None:
        self.device = pick_device()
        self.network = _network(Path(weights)).to(self.device)
        self.seed = seed
        self.real = torch.cat([self._features(images) for _, images in held_out])
        train_features = torch.cat([self._features(images) for _, images in train])
        fid_floor, kid_floor = frechet_and_kid(self.real, train_features, seed=seed)
        self.frame = {"fid_inception_floor": fid_floor, "kid_inception_floor": kid_floor}

    @torch.no_grad()
    def _features(self, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
        """uint8 [n, H, W, 3] -> [n, 2048]; the network resizes to 299 px itself."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).contiguous()
            chunks.append(self.network(batch.to(self.device)).double().cpu())
        return torch.cat(chunks)

    def scores(self, samples: np.ndarray) -> dict[str, float]:
        fid, kid = frechet_and_kid(self.real, self._features(samples), seed=self.seed)
        return {"fid_inception": fid, "kid_inception": kid} | self.frame
