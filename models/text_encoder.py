"""The text encoder (any transformers encoder; CLIP for SD-compatible work, packaged MiniLM offline)."""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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


def load_text_encoder(
    spec: str, device: torch.device | str | None = None
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """(tokenizer, model) from a hub id, a local dir or "package:<module>"; the model in eval mode."""
    source = resolve_encoder_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if source != spec:  # name it by the portable spec, not the site-packages path (cache keys use it)
        tokenizer.name_or_path = spec
    model = AutoModel.from_pretrained(source).eval()
    if device is not None:
        model = model.to(device)
    return tokenizer, model


@torch.no_grad()
def encode_captions(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    captions: list[str],
    max_length: int,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token last hidden states [N, max_length, D] float32 and attention mask [N, max_length] int64.

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
        out = model(input_ids=ids, attention_mask=mask)
        hidden_parts.append(out.last_hidden_state.float().cpu())  # [b, L, D]
        mask_parts.append(mask.long().cpu())  # [b, L]
    if not hidden_parts:
        d = model.config.hidden_size
        return torch.zeros(0, max_length, d), torch.zeros(0, max_length, dtype=torch.long)
    return torch.cat(hidden_parts), torch.cat(mask_parts)


def tokenizer_settings(tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, Any]:
    """Everything about tokenisation that changes the embeddings, for cache keys.

    `vocab_sha256` identifies the vocabulary by content, so the key does not depend on where the
    model dir happens to live (name_or_path of a packaged model is an absolute path).
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
    }
