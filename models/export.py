"""A model as a diffusers pipeline folder, the one form every model is registered in.

The folder has Stable Diffusion's layout (`model_index.json`, `vae/`, `unet/`, `text_encoder/`,
`tokenizer/`, `scheduler/`), so each part loads on its own the usual way, and ldmflow's `vae.pretrained`,
`unet.pretrained` and `text.encoder` take the folder too. Its pipeline class is ldmflow's sampler, shipped
inside the folder (models/sampler/: `pipeline.py` and the modules it imports), so that

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

loads it without ldmflow installed, and draws for a seed the images `ldmflow generate` draws: it is the
same code. Not the stock StableDiffusionPipeline, even with a CLIP text encoder: ldmflow's U-Net attends to
the prompt's tokens under their attention mask (padding masked), and its latents may be normalised per
channel; StableDiffusionPipeline passes no mask and knows only the global scaling factor, so it would
draw other images from the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models.sampler.pipeline import LatentDiffusionPipeline

SAMPLER = Path(__file__).parent / "sampler"  # the pipeline class and every module it imports (relatively)


def export_pipeline(pipe: LatentDiffusionPipeline, folder: str | Path) -> Path:
    """Write `pipe` as a diffusers pipeline folder at `folder` (see the module's doc); return it."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    for module in sorted(SAMPLER.glob("*.py")):
        if module.name != "__init__.py":
            shutil.copyfile(module, folder / module.name)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = ["pipeline", type(pipe).__name__]  # diffusers' custom pipeline: (module, class)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder
