"""Fashion-MNIST as a web-like caption dataset: real images, templated captions with seeded noise.

The 60,000 training images become image files plus a captions table; the 10,000 test images are
copied untouched and never enter the caption data (they are the zero-shot test set).
"""

from __future__ import annotations

import gzip
import io
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from tqdm import tqdm

from clipcore.config import DataConfig
from clipcore.data.layout import replace_file

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_CACHE = "~/.cache/clip-pipeline/fashion-mnist"

# How people name each class on the web; the first is the class name used by zero-shot prompts.
SYNONYMS = {
    "t-shirt": ["t-shirt", "t-shirt", "tee", "top"],
    "trouser": ["trouser", "trousers", "pants", "jeans"],
    "pullover": ["pullover", "pullover", "sweater", "jumper"],
    "dress": ["dress", "dress", "summer dress", "gown"],
    "coat": ["coat", "coat", "jacket", "winter coat"],
    "sandal": ["sandal", "sandals", "summer sandals", "flip flops"],
    "shirt": ["shirt", "shirt", "button-up shirt", "blouse"],
    "sneaker": ["sneaker", "sneakers", "trainers", "running shoes"],
    "bag": ["bag", "bag", "handbag", "purse"],
    "ankle boot": ["ankle boot", "ankle boots", "boots", "leather boots"],
}
CLASS_NAMES = list(SYNONYMS)  # in label order (as clipcore/prompts/fashion_mnist_classes.txt)
TEMPLATES = [
    "a photo of a {}", "a black and white photo of a {}", "{} for sale, barely worn",
    "product shot of a {} on white background", "cheap {} free shipping", "my new {} arrived today",
    "vintage {} in great condition", "close-up of a {}", "studio shot of a {} in grayscale",
    "a {} from the summer collection", "buy this {} online now", "women's {} size M",
    "men's {} best price", "a low resolution picture of a {}", "look at this {}!",
    "{} (used, good condition)", "thumbnail of a stylish {}", "a cropped photo of the {}",
]
NON_ENGLISH = [
    "una camiseta negra de algodón", "ein schwarzer Mantel für den Winter", "une robe d'été légère",
    "scarpe da ginnastica bianche nuove", "bolsa de couro marrom barata", "一件黑色的毛衣",
    "красивые ботинки из кожи", "calça jeans azul tamanho M",
]
SHORT = ["", "img", "nice", "IMG_2041.JPG", "shirt", "photo", "untitled", "  "]


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array: (N, H, W) images or (N,) labels."""
    return read_idx_bytes(Path(path).read_bytes(), str(path))


def read_idx_bytes(payload: bytes, name: str) -> np.ndarray:
    """Parse gzipped IDX bytes; `name` only labels errors."""
    try:
        data = gzip.decompress(payload)
    except (OSError, EOFError) as err:
        raise ValueError(f"{name}: not a gzip file ({err})") from err
    magic, = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{name}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def locate_sources(source_dir: str | Path, cache_dir: str | Path = DOWNLOAD_CACHE) -> Path:
    """The folder holding the four Fashion-MNIST files: `source_dir` when complete, else a download cache
    filled from the dataset's official URLs.

    Raises:
        RuntimeError: a file is neither local nor downloadable (names the file and both places).
    """
    if all((Path(source_dir) / name).exists() for name in FILES):
        return Path(source_dir)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = cache / name
        if target.exists():
            continue
        try:
            with urllib.request.urlopen(URL + name, timeout=60) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError) as err:
            raise RuntimeError(
                f"Fashion-MNIST file {name} is neither in {source_dir} nor downloadable from {URL} ({err}). "
                "Install the Debian package `dataset-fashion-mnist` or copy the four *-ubyte.gz files there."
            ) from err
        read_idx_bytes(payload, name)  # refuse to cache an HTML error page
        tmp = target.with_suffix(".part")
        tmp.write_bytes(payload)
        tmp.rename(target)
    return cache


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class CaptionPlan:
    """What each caption row is: which image it shows, its caption and which kind of noise it carries."""

    image_index: np.ndarray  # (R,) index into the training images
    caption: list[str]
    noise: list[str]  # "", "wrong_class", "short", "non_english", "duplicate", "corrupt"


def plan_captions(labels: np.ndarray, config: DataConfig) -> CaptionPlan:
    """Decide deterministically (from `config.seed`) every row's image, caption and noise."""
    rng = np.random.default_rng(config.seed)
    n = len(labels)
    n_dup = int(round(config.duplicate_fraction * n))
    image_index = np.concatenate([np.arange(n), rng.choice(n, size=n_dup, replace=False)])
    kind = rng.random(len(image_index))
    captions, noise = [], []
    cut_wrong = config.wrong_class_fraction
    cut_short = cut_wrong + config.short_caption_fraction
    cut_foreign = cut_short + config.non_english_fraction
    for row, (idx, u) in enumerate(zip(image_index, kind, strict=True)):
        label = int(labels[idx])
        tag = "duplicate" if row >= n else ""
        if u < cut_wrong:
            label = (label + int(rng.integers(1, len(CLASS_NAMES)))) % len(CLASS_NAMES)
            tag = tag or "wrong_class"
        if u >= cut_wrong and u < cut_short:
            captions.append(str(rng.choice(SHORT)))
            tag = tag or "short"
        elif u >= cut_short and u < cut_foreign:
            captions.append(str(rng.choice(NON_ENGLISH)))
            tag = tag or "non_english"
        else:
            name = str(rng.choice(SYNONYMS[CLASS_NAMES[label]]))
            captions.append(str(rng.choice(TEMPLATES)).format(name))
        noise.append(tag)
    n_corrupt = int(round(config.corrupt_fraction * n))
    for row in rng.choice(n, size=n_corrupt, replace=False):
        noise[row] = "corrupt"
    return CaptionPlan(image_index=image_index, caption=captions, noise=noise)


def build_caption_dataset(config: DataConfig, progress: bool = True) -> dict[str, int]:
    """Write `config.root`: images/*.png, captions.csv (path, caption), test/ (the untouched test set, for zero-shot)
    and train/ (the labeled training split, used only to fit linear probes).

    Deterministic for a given config: rerunning produces byte-identical files, so data.dvc stays valid.

    Returns:
        Row counts per noise kind, plus `rows` and `test_images`.
    """
    root = Path(config.root)
    raw = locate_sources(config.source_dir)
    images = read_idx(raw / FILES[0])[: config.limit]
    labels = read_idx(raw / FILES[1])[: config.limit]
    # labeled splits beside the caption data: test/ (zero-shot) and train/ (linear-probe fitting only)
    for split, names in (("test", FILES[2:]), ("train", FILES[:2])):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            replace_file(root / split / name, (raw / name).read_bytes())
    test = root / "test"
    plan = plan_captions(labels, config)
    rng = np.random.default_rng(config.seed + 1)
    paths = []
    for row in tqdm(range(len(plan.image_index)), desc="writing images", unit="img", disable=not progress):
        rel = f"images/{row // 1000:03d}/{row:06d}.png"
        payload = _png(images[plan.image_index[row]])
        if plan.noise[row] == "corrupt":  # a truncated download: header kept, pixel data cut
            payload = payload[: int(rng.integers(8, len(payload) // 2))]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != payload:
            replace_file(path, payload)
        paths.append(rel)
    replace_file(root / "captions.csv", pl.DataFrame({"path": paths, "caption": plan.caption}).write_csv().encode())
    counts = {"rows": len(paths), "test_images": len(read_idx(test / FILES[3]))}
    for tag in plan.noise:
        if tag:
            counts[tag] = counts.get(tag, 0) + 1
    return counts
