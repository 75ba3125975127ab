"""Samples/s of our training loader against open_clip's own webdataset pipeline on the same shards, side by side.

Ours: `clipcore.train.batches.step_batches` (PairStream in a torch DataLoader, exactly as training builds it) with the
train transform (RandomResizedCrop scale (0.9, 1.0)) and our BPE tokenizer, each uint8 batch then normalized to
float in the consuming process as `TrainingSetup.to_device` does on the CPU. open_clip: `open_clip_train.data.
get_wds_dataset` (open_clip's training code, installed beside `open_clip` by clip-benchmark) with
`open_clip.image_transform(S, is_train=True)` (the same crop scale; bicubic, as open_clip trains) and open_clip's
`SimpleTokenizer`. Same shards, output size, context length, batch size and number of DataLoader workers; the two
alternate (`--repeats` each, the first of each pair swapped every repeat) and the median is reported. Throughput is
counted from the first batch to the last (worker start-up and open_clip's shuffle-buffer fill are shown apart).

It then times, in this one process, the CPU cost per sample of each step of both pipelines (decode, augment,
tokenize, and ours' per-sample seeding and normalization) and, with `--profile`, runs cProfile on our loader's
single-process loop.

    .venv/bin/python benchmarks/dataloader_vs_open_clip.py --samples 20000 --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import itertools
import os
import platform
import pstats
import random
import statistics
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipcore.data.stream import MAX_PIXELS, PairStream, Source, StreamSpec, build_train_transform
from clipcore.data.tar_index import index_shard, read_at
from clipcore.ingest.stage import ShardWriter
from clipcore.model.tokenizer import load_tokenizer, tokenize, train_tokenizer
from clipcore.train.batches import step_batches


def clip_words() -> list[str]:
    """Whole words of CLIP's BPE vocabulary (shipped with open_clip), for captions as varied as real ones."""
    import gzip

    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe()) as file:
        merges = file.read().decode().split("\n")[1:49152 - 256 - 2 + 1]
    words = {"".join(m.split()).removesuffix("</w>") for m in merges if m.endswith("</w>")}
    return sorted(w for w in words if w.isalpha() and len(w) > 2)


def synthetic_jpeg(rng: np.random.Generator, size: int) -> bytes:
    """A size x size RGB JPEG (quality 90) that compresses like a photo (~18 KiB at 256 px): smooth colour fields,
    a few shapes, mild sensor-like noise."""
    image = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 25, size // 2, 2)
        draw.ellipse([int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-10, 11, (size, size, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(root: Path, samples: int, shard_size: int, size: int) -> tuple[list[str], list[str], float]:
    """(shard paths, captions, seconds to write) of `samples` synthetic pairs, reused when already written."""
    words = clip_words()
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(words, rng.integers(5, 21))) for _ in range(samples)]
    paths = [root / f"{i:05d}.tar" for i in range(-(-samples // shard_size))]
    done = root / f"done-{samples}-{shard_size}-{size}"
    if done.exists():
        return [str(p) for p in paths], captions, float(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index, path in enumerate(paths):
        with ShardWriter(path) as writer:
            for i in range(index * shard_size, min((index + 1) * shard_size, samples)):
                writer.write(f"{i:09d}", {"jpg": synthetic_jpeg(rng, size), "txt": captions[i].encode()})
    seconds = time.perf_counter() - start
    done.write_text(str(seconds))
    return [str(p) for p in paths], captions, seconds


def run_ours(spec: StreamSpec, batches: int, batch_size: int, workers: int, normalize: bool) -> tuple[float, float]:
    """(seconds to the first batch, seconds from the first batch to the last) of our training loader; with
    `normalize`, each uint8 batch is also normalized to float here, as `TrainingSetup.to_device` does when training
    on the CPU (on a GPU it runs on the device)."""
    from clipcore.config import ModelConfig
    from clipcore.data.images import channel_stats, normalize_uint8

    model = ModelConfig()
    stats = channel_stats(model.image_mean, model.image_std, spec.channels)  # as ClipModel.normalize
    start = time.perf_counter()
    loader = step_batches(spec.with_pieces(1), 0, batches, batch_size, 0, 1, [(0, 0)] * spec.streams, workers)
    first = None
    for batch in loader:
        assert batch.pixels.shape[0] == batch_size and batch.ids.shape[0] == batch_size
        if normalize:
            normalize_uint8(batch.pixels, *stats)  # (B, C, S, S) float
        first = first or time.perf_counter()
    return first - start, time.perf_counter() - first


def open_clip_args(shards: list[str], samples: int, batch_size: int, workers: int) -> Namespace:
    """The `args` fields `get_wds_dataset` reads, as open_clip's training CLI would set them."""
    return Namespace(train_data="::".join(shards), val_data=None, train_num_samples=samples, dataset_resampled=False,
                     train_data_upsampling_factors=None, seed=0, batch_size=batch_size, workers=workers, world_size=1)


def patch_webdataset_eof() -> None:
    """Let open_clip_train read shards with the installed webdataset: 1.x ends every shard with an `{}` end-of-file
    marker that open_clip's `group_by_keys_nothrow` cannot read (KeyError 'fname'; open_clip[training] pins
    webdataset<=0.2.86, whose expander sends none), so its expander is called without the marker, as 0.2.x did.
    Nothing else in open_clip's pipeline changes; forked DataLoader workers inherit the patch."""
    import functools

    import open_clip_train.data as data
    from webdataset.tariterators import tar_file_expander

    data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def run_open_clip(args: Namespace, preprocess, tokenizer, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, seconds from the first batch to the last) of open_clip's wds loader."""
    from open_clip_train.data import get_wds_dataset

    patch_webdataset_eof()
    start = time.perf_counter()
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    first = None
    iterator = iter(data.dataloader)
    for images, texts in itertools.islice(iterator, batches):
        assert images.shape[0] == args.batch_size and texts.shape[0] == args.batch_size
        first = first or time.perf_counter()
    end = time.perf_counter()
    iterator.close()
    loader = data.dataloader.pipeline[0]  # WebLoader wraps one torch DataLoader
    if loader._iterator is not None:  # persistent workers: stop them before the next run
        loader._iterator._shutdown_workers()
    return first - start, end - first


def per_sample_costs(spec: StreamSpec, shards: list[str], count: int, preprocess, oc_tokenizer) -> list[tuple]:
    """CPU microseconds per sample of each step of both pipelines, on `count` samples in this process, with one
    torch thread and no tokenizer thread pool, as in a DataLoader worker (normalization too: on 2 busy cores the
    training process's 2 OpenMP threads mostly measure contention)."""
    from webdataset.autodecode import ImageHandler

    from clipcore.config import ModelConfig
    from clipcore.data.images import channel_stats, decode_image, normalize_uint8

    refs = [(s, r) for s in shards for r in index_shard(s)][:count]
    files = {s: open(s, "rb") for s, _ in refs}  # noqa: SIM115 (closed below)
    raw = [(read_at(files[s], r.image), read_at(files[s], r.text)) for s, r in refs]
    captions = [t.decode() for _, t in raw]
    ours_tok = load_tokenizer(spec.tokenizer_path, spec.context_length)
    transform = build_train_transform(spec)
    pil_rgb = ImageHandler("pilrgb")
    images = [decode_image(b, MAX_PIXELS) for b, _ in raw]
    crops = [transform(im, random.Random(i)) for i, im in enumerate(images)]
    threads = torch.get_num_threads()
    pixels = torch.stack(crops[:256])  # (256, C, S, S) uint8

    mean, std = channel_stats(ModelConfig().image_mean, ModelConfig().image_std, spec.channels)

    def normalize(batch):  # what ClipModel.normalize does
        return normalize_uint8(batch, mean, std)

    def seeded_crops():  # as decode_sample: a generator seeded by the sample's place, then the crop
        for i, image in enumerate(images):
            transform(image, random.Random(hashlib.sha256(repr((0, 0, 0, i)).encode()).digest()))

    def batched(work):
        return lambda: [work(k) for k in range(0, count, 256)]

    steps = [
        ("ours", "read bytes (seek + read by tar offset)", lambda: [read_at(files[s], r.image) for s, r in refs]),
        ("ours", "decode (decode_image: PIL load + copy)", lambda: [decode_image(b, MAX_PIXELS) for b, _ in raw]),
        ("ours", "augment (seeded crop box + antialiased resize, uint8)", seeded_crops),
        ("ours", "tokenize (encode_batch of 256)", batched(lambda k: tokenize(ours_tok, captions[k:k + 256]))),
        ("ours", "collate (torch.stack of 256 uint8 crops)", batched(lambda k: torch.stack(crops[k:k + 256]))),
        ("ours", "index shard headers (index_shard, once per epoch)",
         lambda: [index_shard(s) for s in sorted(files)]),
        ("ours*", "normalize uint8 -> float (normalize_uint8)", batched(lambda k: normalize(pixels[:count - k]))),
        ("open_clip", "decode (wds pilrgb: PIL load + convert RGB)", lambda: [pil_rgb("jpg", b) for b, _ in raw]),
        ("open_clip", "augment (RRC bicubic, ToTensor, Normalize)", lambda: [preprocess(im) for im in images]),
        ("open_clip", "tokenize (SimpleTokenizer per sample)", lambda: [oc_tokenizer(c) for c in captions]),
    ]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # DataLoader workers run the tokenizer without its thread pool
    torch.set_num_threads(1)  # and torch with one thread (the DataLoader sets it)
    rows = []
    for owner, name, work in steps:
        work()  # warm caches (BPE caches too: real captions repeat words as well)
        cpu, wall = time.process_time(), time.perf_counter()
        work()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append((owner, name, cpu / count * 1e6, wall / count * 1e6))
    torch.set_num_threads(threads)
    for file in files.values():
        file.close()
    return rows


def profile_ours(spec: StreamSpec, batches: int, batch_size: int, top: int) -> str:
    """cProfile of our loader's loop in this process (no workers): the functions where the time goes."""
    stream = PairStream(spec.with_pieces(1), 0, 1, batch_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in itertools.islice(iter(stream), batches):
        pass
    profiler.disable()
    torch.set_num_threads(threads)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def describe_machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import open_clip
    import PIL
    import torchvision
    import webdataset

    return (f"machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, no GPU; shared with other jobs "
            f"(load average at start {os.getloadavg()[0]:.1f})\n"
            f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"pillow {PIL.__version__}, open_clip {open_clip.__version__}, webdataset {webdataset.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/clip-loader-bench"), help="where the shards go")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=1_000)
    parser.add_argument("--source-size", type=int, default=256, help="side of the synthetic JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="side of the crops both loaders output")
    parser.add_argument("--context-length", type=int, default=77)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cost-samples", type=int, default=2_000, help="samples for the per-step costs")
    parser.add_argument("--profile", action="store_true", help="cProfile our single-process loop")
    parser.add_argument("--profile-batches", type=int, default=8)
    args = parser.parse_args()

    import open_clip

    print(describe_machine())
    shards, captions, seconds = write_shards(args.root, args.samples, args.shard_size, args.source_size)
    size = sum(Path(s).stat().st_size for s in shards)
    print(f"shards: {args.samples} synthetic {args.source_size}x{args.source_size} RGB JPEGs (q90, mean "
          f"{size / args.samples / 1024:.1f} KiB incl. tar overhead) + captions of 5-20 CLIP-vocabulary words, "
          f"{len(shards)} shards of {args.shard_size}; written in {seconds:.0f} s")
    for s in shards:  # both loaders read from the page cache
        Path(s).read_bytes()
    tokenizer_path = args.root / "tokenizer.json"
    train_tokenizer(captions, 49_408, args.context_length).save(str(tokenizer_path))
    spec = StreamSpec(sources=(Source(tuple(shards)),), image_size=args.image_size, channels=3,
                      tokenizer_path=str(tokenizer_path), context_length=args.context_length, seed=0,
                      streams=args.workers or 1, shuffle_shards=4, augment_scale=(0.9, 1.0))
    preprocess = open_clip.image_transform(args.image_size, is_train=True)
    oc_tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=args.context_length)
    oc_args = open_clip_args(shards, args.samples, args.batch_size, args.workers)
    # the same number of full batches from both, within one pass over the shards (each worker reads its half)
    batches = (args.samples // max(1, args.workers) // args.batch_size) * max(1, args.workers)
    print(f"each run: {batches} batches of {args.batch_size} ({batches * args.batch_size} samples), "
          f"{args.workers} DataLoader workers, {args.image_size} px output, context length {args.context_length}; "
          f"open_clip pipeline: open_clip_train.data.get_wds_dataset (installed open_clip_train package; "
          f"webdataset 1.x's per-shard EOF marker turned off for it, see patch_webdataset_eof)\n")

    loaders = {
        "ours": lambda: run_ours(spec, batches, args.batch_size, args.workers, normalize=False),
        "ours+norm": lambda: run_ours(spec, batches, args.batch_size, args.workers, normalize=True),
        "open_clip": lambda: run_open_clip(oc_args, preprocess, oc_tokenizer, batches),
    }
    runs = {name: [] for name in loaders}
    print(f"{'repeat':>6} {'loader':<10} {'first batch s':>14} {'steady samples/s':>17}")
    for repeat in range(args.repeats):
        names = list(loaders)
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # rotate who goes first
            startup, span = loaders[name]()
            rate = (batches - 1) * args.batch_size / span
            runs[name].append((startup, rate))
            print(f"{repeat:>6} {name:<10} {startup:>14.2f} {rate:>17.0f}", flush=True)
    median = {name: statistics.median(r[1] for r in runs[name]) for name in runs}
    print("\nmedian samples/s: " + ", ".join(f"{name} {rate:.0f}" for name, rate in median.items()))
    print("median s to first batch: " + ", ".join(
        f"{name} {statistics.median(r[0] for r in runs[name]):.2f}" for name in runs))
    print(f"ours / open_clip = {median['ours'] / median['open_clip']:.2f} (uint8 batches, as step_batches yields them "
          f"to training)")
    print(f"ours+norm / open_clip = {median['ours+norm'] / median['open_clip']:.2f} (also normalized to float in the "
          f"consuming process, as CPU training does; open_clip's batches come normalized from its workers)\n")

    print(f"CPU cost per sample, one process, {args.cost_samples} samples (us; cpu = process time of all threads):")
    print(f"{'pipeline':<10} {'step':<52} {'cpu us':>8} {'wall us':>8}")
    rows = per_sample_costs(spec, shards, args.cost_samples, preprocess, oc_tokenizer)
    for owner, name, cpu, wall in rows:
        print(f"{owner:<10} {name:<52} {cpu:>8.0f} {wall:>8.0f}")
    for owner in ("ours", "open_clip"):
        print(f"{owner:<10} {'total in a worker':<52} {sum(r[2] for r in rows if r[0] == owner):>8.0f} "
              f"{sum(r[3] for r in rows if r[0] == owner):>8.0f}")
    print("ours*: runs in the training process (on a GPU, on the device), not in the workers")
    if args.profile:
        print(f"\ncProfile of our loader, single process (one torch thread, as a worker), {args.profile_batches} "
              f"batches of {args.batch_size}:")
        print(profile_ours(spec, args.profile_batches, args.batch_size, 25))


if __name__ == "__main__":
    main()
