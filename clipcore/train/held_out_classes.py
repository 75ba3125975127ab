"""Classes held out of training (`train.exclude_classes`), for the transfer case of Chen et al. (ICLR 2024): the model
never sees the classes' names in a caption, nor (with `train.exclude_labeled`) their images, and evaluation then
measures zero-shot top-1 on them.

A kept row is dropped when its caption names an excluded class (the class name or, for Fashion-MNIST's classes, one of
the web synonyms the caption data is written with; whole words, any case), or when its image is one of the labeled
set's images of an excluded class. The caption data carries no labels, and 10% of its captions name a wrong class, so
an image is recognised by content: the sha256 of its file, which the ingest manifest records, against that of every
labeled image of an excluded class PNG-encoded as `clip-pipeline data` wrote the caption images.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from clipcore.data.fashion_mnist import SYNONYMS
from clipcore.data.fashion_mnist import _png as caption_image_png  # the encoder the caption images were written with
from clipcore.data.labeled_sets import idx_files, idx_set


@dataclass(frozen=True)
class Exclusion:
    """The kept rows a class exclusion drops, and why (a row can be counted under both)."""

    uids: frozenset[str]
    by_caption: int  # rows whose caption names an excluded class
    by_image: int  # rows whose image is a labeled image of an excluded class
    labeled_images: int  # the labeled set's images of the excluded classes

    def summary(self) -> dict[str, int]:
        return {"excluded_rows": len(self.uids), "excluded_by_caption": self.by_caption,
                "excluded_by_image": self.by_image, "excluded_labeled_images": self.labeled_images}


def class_indices(excluded: tuple[str, ...], class_names: list[str]) -> list[int]:
    """The label of each excluded class.

    Raises:
        ValueError: a name that is not one of `class_names`.
    """
    unknown = [name for name in excluded if name not in class_names]
    if unknown:
        raise ValueError(f"train.exclude_classes: {unknown[0]!r} is not a class of eval.class_names ({class_names})")
    return [class_names.index(name) for name in excluded]


def caption_pattern(excluded: tuple[str, ...]) -> str:
    """A case-insensitive regular expression (Rust and Python syntax, no look-around) matching a caption that names
    one of `excluded`: the name, its plural, or a Fashion-MNIST synonym, as whole words. A hyphen counts as part of a
    word, so `shirt` does not match `t-shirt`."""
    terms = sorted({t for name in excluded for t in (name, *SYNONYMS.get(name, ()))}, key=len, reverse=True)
    alternatives = "|".join(re.escape(t) + "(?:e?s)?" for t in terms)
    return rf"(?i)(?:^|[^\w-])(?:{alternatives})(?:$|[^\w-])"


def labeled_image_hashes(labeled: str | Path, class_names: list[str], labels: list[int]) -> set[str]:
    """sha256 of each image of `labeled` (an IDX folder) whose label is in `labels`, PNG-encoded as the caption data's
    images are."""
    files = idx_files(labeled)
    if files is None:
        raise ValueError(f"train.exclude_labeled: {labeled} is not a folder of IDX files (the labeled copy of the "
                         "caption data's images, e.g. data/fashion_mnist/train)")
    wanted, hashes = set(labels), set()
    for images, targets in idx_set(*files, class_names).batches(4096):
        for image, target in zip(images.numpy(), targets.tolist(), strict=True):
            if target in wanted:
                hashes.add(hashlib.sha256(caption_image_png(image)).hexdigest())
    return hashes


def excluded_rows(kept_path: str | Path, excluded: tuple[str, ...], class_names: list[str],
                  labeled: str | Path = "") -> Exclusion:
    """The kept rows (uids) to drop from training for `excluded` classes: by caption, and by image when `labeled`
    names the labeled copy of the caption data's images. Reads only the manifest's uid, caption and sha256 columns."""
    labels = class_indices(excluded, class_names)
    hashes = labeled_image_hashes(labeled, class_names, labels) if labeled else set()
    by_caption = pl.col("caption").fill_null("").str.contains(caption_pattern(excluded))
    by_image = pl.col("sha256").is_in(list(hashes)) if hashes else pl.lit(False)
    flags = pl.scan_parquet(kept_path).select("uid", by_caption.alias("caption"), by_image.alias("image")).filter(
        pl.col("caption") | pl.col("image")).collect(engine="streaming")
    exclusion = Exclusion(frozenset(flags["uid"].to_list()), int(flags["caption"].sum()), int(flags["image"].sum()),
                          len(hashes))
    if hashes and exclusion.by_image == 0:  # a set that is not the caption data's own images would silently do nothing
        raise ValueError(f"train.exclude_labeled: none of the {len(hashes)} images of {list(excluded)} in {labeled} "
                         "is a kept training image; it must be the labeled copy of the caption data's images")
    return exclusion
