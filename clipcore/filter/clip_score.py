"""CLIP scores of the kept (image, caption) pairs, from any pair of embedding functions, and a local Hugging Face CLIP.

`score_shards` is the filter stage's scoring job: shard after shard, the shard's kept rows are scored (its tar read
once, in order, one batch of `batch_size` images at a time, on the GPU when the model is there), set aside on disk
with a `clip_score` column, and counted in a histogram; the cut (a threshold, or the exact quantile for
`top_fraction`, clipcore/filter/quantile.py) then goes over the set-aside shards. Memory follows the batch size and
one shard, never the number of kept rows.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from clipcore.config import ClipScoreConfig
from clipcore.data.shards import iter_samples
from clipcore.filter.quantile import ScoreHistogram, exact_quantile
from clipcore.filter.rules import REASON

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

    Batches follow the shards' order and run across shard ends, so with `kept` in shard order they hold the same
    rows as `batch_size` consecutive kept rows would. Memory: one batch of images and one shard's uid index.
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


def score_shards(ingest_dir: str | Path, shards: Iterable[tuple[Path, pl.DataFrame]],
                 load: Callable[[], tuple[ImageEmbedder, TextEmbedder]], config: ClipScoreConfig, work: Path,
                 progress: bool = True) -> tuple[Iterator[tuple[Path, pl.DataFrame]], float | None]:
    """Score the kept rows (`filter_reason` null) of each shard and apply the cut: (the shards again, with
    `clip_score` on their kept rows and `clip_score_low` given to those below the cut, the cut).

    Every shard is scored before the cut is known, so each is set aside in `work` (a parquet file per shard) and
    read back by the returned iterator. `load()` gives the embedders, on the first shard with kept rows (the cut is
    None when no row is kept and no threshold set).
    """
    work.mkdir(parents=True, exist_ok=True)
    histogram, embedders, pieces = ScoreHistogram(), None, []
    for path, frame in tqdm(shards, desc="filter: clip score", unit="shard", disable=not progress):
        kept = frame.filter(pl.col(REASON).is_null())
        scores = np.full(frame.height, np.nan, dtype=np.float32)
        if kept.height:
            embedders = embedders or load()
            kept_scores = score_kept(ingest_dir, kept, *embedders, config.batch_size, progress=False)
            histogram.add(kept_scores)  # raises on a score that is not finite
            scores[np.flatnonzero(frame[REASON].is_null().to_numpy())] = kept_scores
        piece = work / f"{len(pieces):06d}.parquet"
        frame.with_columns(pl.Series("clip_score", scores).fill_nan(None)).write_parquet(piece, compression="lz4")
        pieces.append((path, piece))
    cut = config.threshold
    if cut is None and histogram.total:
        def batches() -> Iterator[np.ndarray]:
            for _, piece in pieces:
                yield pl.read_parquet(piece, columns=["clip_score"])["clip_score"].drop_nulls().to_numpy()

        cut = exact_quantile(histogram, 1 - config.top_fraction, batches)

    def cut_shards() -> Iterator[tuple[Path, pl.DataFrame]]:
        for path, piece in pieces:
            low = pl.col(REASON).is_null() & (pl.col("clip_score") < cut) if cut is not None else pl.lit(False)
            yield path, pl.read_parquet(piece).with_columns(pl.when(low).then(pl.lit("clip_score_low"))
                                                            .otherwise(pl.col(REASON)).alias(REASON))
            piece.unlink()

    return cut_shards(), cut


def clip_embedders(config: ClipScoreConfig, load_embedders: Callable[[str], tuple[ImageEmbedder, TextEmbedder]]
                   | None = None) -> tuple[ImageEmbedder, TextEmbedder]:
    """The embedders of `config.model`: a local Hugging Face CLIP directory, else whatever `load_embedders(uri)`
    gives (the pipeline's MLflow loader)."""
    if Path(config.model).is_dir():
        return hf_clip_embedders(config.model, config.device)
    if load_embedders is None:
        raise ValueError(f"filter.clip_score.model={config.model!r} is not a local CLIP directory and no model "
                         "loader was given")
    return load_embedders(config.model)


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
