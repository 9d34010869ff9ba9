"""The latent and text caches against the real S3 server: keys follow content, hits skip work."""

import json
import time

import pandas as pd
import torch
from tiny_sd import write_sd_text_parts

from models.autoencoder.vae import build_vae
from tasks.cache_latents import run_cache_latents
from tasks.common.config import config_from_dict
from tasks.common.content_cache import gather
from tasks.embed_text import run_embed_text
from tasks.ingest.stage import run_ingest
from tasks.train_unet.data import load_training_set


def tiny_cfg(store, count=24):
    return config_from_dict(
        {
            "data": {"resolution": 16, "shard_size": 16, "synthetic": {"count": count}},
            "latents": {"shard_size": 10},
            "text": {"max_length": 8, "shard_size": 10},
            "storage": {"bucket": store.bucket},
        }
    )


def save_tiny_vae(path, seed):
    torch.manual_seed(seed)
    vae = build_vae(block_out_channels=[8, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4)
    vae.register_to_config(scaling_factor=1.5, latents_mean=None, latents_std=None)
    vae.save_pretrained(path)
    return vae


def test_latent_keys_change_when_vae_weights_change(tmp_path, object_store):
    cfg = tiny_cfg(object_store)
    run_ingest(cfg, tmp_path / "ingested")
    vae = save_tiny_vae(tmp_path / "vae", seed=0)

    first = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "l1", object_store)
    assert first["shard_misses"] == 3 and first["items_computed"] == 24
    again = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "l2", object_store)
    assert again["shard_hits"] == 3 and again["items_computed"] == 0  # same VAE: all served from S3
    m1 = pd.read_parquet(tmp_path / "l1" / "manifest.parquet")
    assert m1.equals(pd.read_parquet(tmp_path / "l2" / "manifest.parquet"))

    with torch.no_grad():  # one weight changes -> a new fingerprint -> every key changes
        next(vae.parameters()).view(-1)[0] += 1e-3
    vae.save_pretrained(tmp_path / "vae")
    changed = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "l3", object_store)
    m3 = pd.read_parquet(tmp_path / "l3" / "manifest.parquet")
    assert changed["vae_fingerprint"] != first["vae_fingerprint"]
    assert not set(m1["latent_key"]) & set(m3["latent_key"])
    assert changed["items_computed"] == 24
    assert json.loads((tmp_path / "l3" / "cache.json").read_text())["latent_shapes"] == {"16x16": [4, 4, 4]}


def test_text_cache_has_every_caption_once_plus_empty(tmp_path, object_store):
    cfg = tiny_cfg(object_store)
    run_ingest(cfg, tmp_path / "ingested")
    info = run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    manifest = pd.read_parquet(tmp_path / "text" / "manifest.parquet")
    captions = set(pd.read_parquet(tmp_path / "ingested" / "manifest.parquet")["caption"])
    assert set(manifest["caption"]) == captions | {""}
    assert manifest["caption"].is_unique and manifest["text_key"].is_unique
    assert info["hidden_size"] == 384
    assert info["captions_truncated"] > 0  # max_length 8 is shorter than "a small red circle at the top left"
    assert info["longest_caption_tokens"] > 8

    save_tiny_vae(tmp_path / "vae", seed=0)
    run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "latents", object_store)
    data = load_training_set(tmp_path / "latents", tmp_path / "text", object_store, tmp_path / "local")
    n_train = (pd.read_parquet(tmp_path / "ingested" / "manifest.parquet")["split"] == "train").sum()
    assert len(data.items) == n_train and data.latent_shapes == {"16x16": [4, 4, 4]}
    hidden, mask = data.text(torch.arange(len(manifest)))  # read from local copies of the shards
    refs = [manifest[c].tolist() for c in ("shard", "shard_sha256", "shard_index")]
    stored = gather(object_store, *refs, "hidden")
    assert stored.dtype == torch.float16 and torch.equal(hidden, stored.float())  # float16 as stored
    assert hidden.shape == (len(manifest), 8, 384) and mask.dtype == torch.long
    assert mask[data.empty_index].sum() == 2  # [CLS] [SEP] only
    assert len(list((tmp_path / "local").glob("*.safetensors"))) == manifest["shard"].nunique()
    assert data.normalisation["scaling_factor"] == 1.5


def test_flip_caches_each_images_mirror_and_training_uses_it(tmp_path, object_store):
    from models.sampler.images import to_model_space
    from tasks.common.content_cache import read_shard
    from tasks.common.ingested import read_ingested
    from tasks.train_unet.loop import run_train_unet

    raw = {
        "data": {"resolution": 16, "shard_size": 16, "synthetic": {"count": 24}},
        "latents": {"shard_size": 10, "flip": True},
        "text": {"max_length": 8, "shard_size": 10},
        "unet": {"block_out_channels": [16, 32], "attention_head_dim": 4, "steps": 2, "batch_size": 4,
                 "warmup_steps": 1, "num_train_timesteps": 50},
        "storage": {"bucket": object_store.bucket},
    }  # fmt: skip
    cfg = config_from_dict(raw)
    run_ingest(cfg, tmp_path / "ingested")
    vae = save_tiny_vae(tmp_path / "vae", seed=0).eval()
    ingested, vae_dir = tmp_path / "ingested", tmp_path / "vae"
    plain = run_cache_latents(tiny_cfg(object_store), ingested, vae_dir, tmp_path / "l0", object_store)
    flipped = run_cache_latents(cfg, tmp_path / "ingested", tmp_path / "vae", tmp_path / "l1", object_store)
    assert flipped["items_computed"] == 24 and flipped["flip"] and not plain["flip"]
    with_flip = pd.read_parquet(tmp_path / "l1" / "manifest.parquet")
    assert not set(with_flip["latent_key"]) & set(
        pd.read_parquet(tmp_path / "l0" / "manifest.parquet")["latent_key"]
    )

    manifest, images = read_ingested(tmp_path / "ingested")
    row = with_flip.iloc[5]
    stored = read_shard(object_store, row["shard"], row["shard_sha256"])
    pixels = to_model_space(images[5:6])
    with torch.no_grad():
        mirror = vae.encode(pixels.flip(-1)).latent_dist.mean
        straight = vae.encode(pixels).latent_dist.mean
    got_mirror, got_straight = stored["mean_flip"][row["shard_index"]], stored["mean"][row["shard_index"]]
    assert torch.allclose(got_mirror.float(), mirror[0], atol=2e-3)
    assert torch.allclose(got_straight.float(), straight[0], atol=2e-3)
    assert not torch.allclose(got_mirror, got_straight, atol=1e-2)  # the shapes sit off-centre

    run_embed_text(cfg, tmp_path / "ingested", tmp_path / "text", object_store)
    metrics = run_train_unet(cfg, tmp_path / "l1", tmp_path / "text", tmp_path / "unet", object_store)
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["final_train_loss"]))


def test_a_shard_encoded_in_small_batches_equals_one_batch(tmp_path, object_store):
    from models.fingerprint import module_fingerprint
    from tasks.cache_latents import LatentEncoder

    cfg = tiny_cfg(object_store)
    run_ingest(cfg, tmp_path / "ingested")
    vae = save_tiny_vae(tmp_path / "vae", seed=0)
    manifest = pd.read_parquet(tmp_path / "ingested" / "manifest.parquet")
    rows = list(zip(manifest["shard"], manifest["index"], strict=True))[::-1][:10]  # across two ingest shards
    fingerprint = module_fingerprint(vae)
    args = (str(tmp_path / "vae"), fingerprint, str(tmp_path / "ingested"))
    whole = LatentEncoder(*args, batch_size=10, flip=True)(rows)
    batched = LatentEncoder(*args, batch_size=3, flip=True)(rows)
    assert set(whole) == set(batched) == {"mean", "std", "mean_flip", "std_flip"}
    for name in whole:
        assert whole[name].shape == (10, 4, 4, 4) and whole[name].dtype == torch.float16
        assert torch.allclose(whole[name].float(), batched[name].float(), atol=1e-3)


def test_encoding_waits_for_a_slow_s3_so_few_shards_are_held_in_memory(object_store):
    from infra.storage import ObjectStore
    from tasks.common.content_cache import SHARDS_HELD, build_cache

    made, stored, waiting = [], [], []

    class SlowStore(ObjectStore):  # the real server, answering slower than shards are made
        def put_bytes(self, key, data, metadata=None):
            time.sleep(0.05)
            etag = super().put_bytes(key, data, metadata)
            stored.append(key)
            return etag

    def encode(inputs):
        waiting.append(len(made) - len(stored))  # made before this one and not yet stored
        made.append(inputs)
        return {"x": torch.tensor(inputs)}

    o = object_store
    slow = SlowStore(o.endpoint_url, o.bucket, o.prefix, o.region, o.access_key, o.secret_key)
    keys = [f"item-{i}" for i in range(40)]
    stats = build_cache(slow, "slow", keys, list(range(40)), 4, encode, "slow S3")
    assert stats.shard_misses == 10 and len(stored) == 10
    assert max(waiting) + 1 <= SHARDS_HELD  # without the wait, all 10 would pile up behind the uploads
    assert max(waiting) == SHARDS_HELD - 1  # and uploads still overlap encoding


def test_gather_fetches_each_shard_once_and_puts_rows_in_the_asked_order(object_store):
    from infra.storage import ObjectStore
    from tasks.common.content_cache import build_cache, gather_tensors

    fetched = []

    class CountingStore(ObjectStore):
        def get_bytes(self, key):
            fetched.append(key)
            return super().get_bytes(key)

    def encode(inputs):
        return {"x": torch.tensor(inputs, dtype=torch.float16), "y": -torch.tensor(inputs).view(-1, 1)}

    o = object_store
    store = CountingStore(o.endpoint_url, o.bucket, o.prefix, o.region, o.access_key, o.secret_key)
    keys = [f"item-{i}" for i in range(12)]
    refs = build_cache(store, "gather", keys, list(range(12)), 5, encode, "gather").refs
    order = [7, 0, 11, 3, 3, 9, 1]  # across all three shards, one row twice
    columns = [
        [refs[i].shard for i in order],
        [refs[i].sha256 for i in order],
        [refs[i].index for i in order],
    ]
    got = gather_tensors(store, *columns, ["x", "y"])
    assert got["x"].dtype == torch.float16 and got["x"].tolist() == order
    assert got["y"].shape == (7, 1) and got["y"].view(-1).tolist() == [-i for i in order]
    assert sorted(fetched) == sorted({r.shard for r in refs})  # each shard once, for both tensors


def test_an_sd_text_encoder_fills_the_text_cache_at_its_own_length_and_clip_skip_keys_it_apart(
    tmp_path, object_store
):
    sd = write_sd_text_parts(tmp_path / "sd")  # an SD pipeline folder's tokenizer/ and text_encoder/
    cfg = tiny_cfg(object_store, count=8)
    run_ingest(cfg, tmp_path / "ingested")
    keys, hidden = {}, {}
    for skip in (0, 1):
        text = {"encoder": str(sd), "max_length": None, "clip_skip": skip, "shard_size": 10}
        cfg = config_from_dict({**cfg.model_dump(mode="json"), "text": text})
        info = run_embed_text(cfg, tmp_path / "ingested", tmp_path / f"text{skip}", object_store)
        assert info["max_length"] == 77 and info["clip_skip"] == skip and info["hidden_size"] == 32
        assert info["items_computed"] == info["captions"]  # nothing shared between the two layers
        manifest = pd.read_parquet(tmp_path / f"text{skip}" / "manifest.parquet")
        keys[skip] = set(manifest["text_key"])
        refs = [manifest[c].tolist() for c in ("shard", "shard_sha256", "shard_index")]
        hidden[skip] = gather(object_store, *refs, "hidden")
    assert not keys[0] & keys[1]
    assert hidden[0].shape == hidden[1].shape == (len(keys[0]), 77, 32)
    assert (hidden[0].float() - hidden[1].float()).abs().max() > 0.1
