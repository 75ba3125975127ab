"""CLIP scores of (image, caption) pairs, from any pair of embedding functions, and a local Hugging Face CLIP."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipcore.data.shards import iter_samples

ImageEmbedder = Callable[[list[bytes]], np.ndarray]
TextEmbedder = Callable[[list[str]], np.ndarray]


def read_image_bytes(shards: Iterable[str | Path], uids: Iterable[str]) -> dict[str, bytes]:
    """The stored image bytes of the samples whose key is in `uids`."""
    return {key: payload for key, payload, _ in iter_samples(shards, uids)}


def cosine_scores(embed_images: ImageEmbedder, embed_texts: TextEmbedder, images: list[bytes], captions: list[str],
                  batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """(N,) cosine similarity of each image with its own caption (embeddings are renormalized here)."""
    scores = []
    for i in tqdm(range(0, len(images), batch_size), desc="clip score", unit="batch", disable=not progress):
        image_emb = np.asarray(embed_images(images[i : i + batch_size]), dtype=np.float32)  # (B, D)
        text_emb = np.asarray(embed_texts(captions[i : i + batch_size]), dtype=np.float32)  # (B, D)
        image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
        text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
        scores.append((image_emb * text_emb).sum(1))
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def hf_clip_embedders(model_dir: str | Path) -> tuple[ImageEmbedder, TextEmbedder]:
    """Embedding functions of a Hugging Face CLIP saved in a local directory (no hub access)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)

    @torch.no_grad()
    def images(payloads: list[bytes]) -> np.ndarray:
        pil = [Image.open(io.BytesIO(p)).convert("RGB") for p in payloads]
        out = model.get_image_features(**processor(images=pil, return_tensors="pt"))
        return (out if torch.is_tensor(out) else out.pooler_output).numpy()

    @torch.no_grad()
    def texts(captions: list[str]) -> np.ndarray:
        batch = processor(text=captions, return_tensors="pt", padding=True, truncation=True)
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return (out if torch.is_tensor(out) else out.pooler_output).numpy()

    return images, texts
