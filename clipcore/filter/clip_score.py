"""CLIP scores of the kept (image, caption) pairs, from any pair of embedding functions, and a local Hugging Face CLIP.

The kept rows' images are read shard by shard, each shard tar once and in order, and scored one batch at a time:
memory follows the batch size (and one shard's uid index), never the number of kept rows."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from clipcore.data.shards import iter_samples

ImageEmbedder = Callable[[list[bytes]], np.ndarray]
TextEmbedder = Callable[[list[str]], np.ndarray]


def iter_kept_images(ingest_dir: str | Path, kept: pl.DataFrame) -> Iterator[tuple[int, bytes]]:
    """(row of `kept`, stored image bytes) of every kept row, shard after shard in name order, in each shard's tar
    order; raises ValueError when a kept row is not in its shard."""
    rows_by_shard = (kept.select("shard").with_row_index("row").group_by("shard").agg("row").sort("shard"))
    uids = kept["uid"]
    for shard, rows in rows_by_shard.iter_rows():
        wanted = dict(zip(uids.gather(rows).to_list(), rows, strict=True))  # uid -> row, this shard's only
        for key, payload, _ in iter_samples([Path(ingest_dir) / shard], wanted):
            yield wanted[key], payload


def pair_cosines(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """(B,) cosine of each image embedding with its caption's, both (B, D) and renormalized here."""
    image_emb = np.asarray(image_emb, dtype=np.float32)
    text_emb = np.asarray(text_emb, dtype=np.float32)
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    return (image_emb * text_emb).sum(1)


def score_kept(ingest_dir: str | Path, kept: pl.DataFrame, embed_images: ImageEmbedder, embed_texts: TextEmbedder,
               batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """(N,) CLIP score of each kept row (aligned with `kept`): its stored image against its `caption`.

    Batches follow the shards' order and run across shard ends, so with `kept` in shard order (as the filter's,
    sorted by uid) they hold the same rows as `batch_size` consecutive kept rows would.
    """
    captions = kept["caption"]
    scores = np.full(kept.height, np.nan, dtype=np.float32)
    rows: list[int] = []
    payloads: list[bytes] = []

    def score_batch() -> None:
        texts = captions.gather(rows).to_list()
        scores[rows] = pair_cosines(embed_images(payloads), embed_texts(texts))
        rows.clear()
        payloads.clear()

    with tqdm(total=kept.height, desc="clip score", unit="pair", disable=not progress) as bar:
        for row, payload in iter_kept_images(ingest_dir, kept):
            rows.append(row)
            payloads.append(payload)
            if len(rows) == batch_size:
                bar.update(len(rows))
                score_batch()
        if rows:
            bar.update(len(rows))
            score_batch()
    return scores


def hf_clip_embedders(model_dir: str | Path, device: str = "auto") -> tuple[ImageEmbedder, TextEmbedder]:
    """Embedding functions of a Hugging Face CLIP saved in a local directory (no hub access), on `device` (bf16
    autocast on CUDA); they return float32 arrays on the CPU."""
    from transformers import CLIPModel, CLIPProcessor

    from clipcore.model.device import resolve_device

    where = resolve_device(device, "filter.clip_score.device")
    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval().to(where)
    processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)

    def features(out) -> np.ndarray:
        out = out if torch.is_tensor(out) else out.pooler_output
        return out.float().cpu().numpy()

    def autocast() -> AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if where.type == "cuda" else nullcontext()

    @torch.no_grad()
    def images(payloads: list[bytes]) -> np.ndarray:
        pil = [Image.open(io.BytesIO(p)).convert("RGB") for p in payloads]
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"].to(where, non_blocking=True)
        with autocast():
            return features(model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def texts(captions: list[str]) -> np.ndarray:
        batch = processor(text=captions, return_tensors="pt", padding=True, truncation=True)
        with autocast():
            return features(model.get_text_features(input_ids=batch["input_ids"].to(where),
                                                    attention_mask=batch["attention_mask"].to(where)))

    return images, texts
