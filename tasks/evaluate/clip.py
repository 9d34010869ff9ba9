"""CLIP score of samples against their prompts, when `eval.clip_model` names a local CLIP folder (a
transformers `CLIPModel` with its `CLIPProcessor` files, e.g. a downloaded openai/clip-vit-base-patch32):
loaded from there, nothing is downloaded. The real held-out images' score against their own captions is
reported beside it (`clip_score_real`).

The score is torchmetrics' definition, 100 x max(cos(image, caption), 0) averaged over pairs (Hessel et
al. 2021 with w = 100). It is computed here because torchmetrics 1.9's CLIPScore reads the features as
tensors, and transformers 5 returns them inside a model output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor

from tasks.evaluate.scores import ImageSet


class ClipReference:
    """The CLIP model, and the real held-out images' score, computed once."""

    def __init__(self, model_dir: str, held_out: ImageSet) -> None:
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise ValueError(f"eval.clip_model: {folder} is not a CLIP model folder (no config.json)")
        self.parts = (CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder))
        self.real = self._score(
            [images for _, images in held_out], [list(rows["caption"]) for rows, _ in held_out]
        )

    @torch.no_grad()
    def _score(self, image_batches: list[np.ndarray], caption_batches: list[list[str]]) -> float:
        model, processor = self.parts
        longest = model.config.text_config.max_position_embeddings
        total, count = 0.0, 0
        for images, captions in zip(image_batches, caption_batches, strict=True):
            inputs = processor(text=captions, images=list(images), return_tensors="pt", padding=True,
                               truncation=True, max_length=longest)  # fmt: skip
            image = model.get_image_features(pixel_values=inputs["pixel_values"])
            text = model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
            image, text = (getattr(f, "pooler_output", f) for f in (image, text))  # transformers 5: an output
            total += float((100 * F.cosine_similarity(image, text, dim=-1)).clamp(min=0).sum())
            count += len(images)
        return total / count

    def scores(self, samples: np.ndarray, prompts: list[str]) -> dict[str, float]:
        return {"clip_score": self._score([samples], [prompts]), "clip_score_real": self.real}
