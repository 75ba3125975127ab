"""Peak RSS of zero-shot evaluation and of CLIP-score filtering at several set sizes: this code beside another
checkout (`--before`), each measurement a fresh process, on the same synthetic data.

    git worktree add --detach /tmp/eval-before 6059d8b
    uv run --frozen python benchmarks/eval_memory.py --sizes 2000 8000 32000 --before /tmp/eval-before \
        --out benchmarks/results/eval_memory.txt

Data (made once under `--data`): 256-px RGB JPEGs of smooth noise (about 31 KB each; web images from img2dataset
at 256 px are about 19 KB).
- zero-shot: `zero_shot_on_test_set` (the promotion gate's entry point before the suite; its body for this code)
  on a csv labeled set of the first N images (10 classes, the fashion_mnist templates) with a tiny ViT checkpoint at
  128 px RGB;
- CLIP score: `run_filter` with `filter.clip_score` on, scored by a tiny local Hugging Face CLIP, on an ingest folder
  of N rows (ingested once with this code, 2,000 rows a shard, JPEG), language rule off.
Both run on the CPU. Peak RSS is the child's ru_maxrss (imports and models included); the zero-shot top-1 and the
filter's kept count are printed too, so both versions are seen to compute the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "cotton", "vintage", "summer", "classic", "coat", "shirt", "bag", "sneaker", "dress", "boot"]
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

ZERO_SHOT_CHILD = r"""
import json, resource, sys, time
from clipcore.config import EvalConfig
try:
    from clipcore.evaluate.stage import zero_shot_on_test_set  # older code: the gate's entry point
except ImportError:  # since the gate scores a whole suite: the test set's zero-shot alone, as that function did
    def zero_shot_on_test_set(checkpoint, e):
        from clipcore.evaluate.evaluation import zero_shot, zero_shot_metrics
        from clipcore.evaluate.stage import open_test_set
        from clipcore.model.clip_model import checkpoint_templates, load_checkpoint
        model, tokenizer = load_checkpoint(checkpoint)
        tally, _ = zero_shot(model, tokenizer, open_test_set(e, model.config), checkpoint_templates(checkpoint),
                             e.batch_size)
        return zero_shot_metrics(tally)
data, n = sys.argv[1], int(sys.argv[2])
e = EvalConfig(labeled_set=f"{data}/set.csv", class_names=f"{data}/classes.txt", max_test_images=n, batch_size=500)
t = time.perf_counter()
metrics = zero_shot_on_test_set(f"{data}/checkpoint", e)
print(json.dumps({"s": time.perf_counter() - t, "mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "check": round(metrics["zero_shot_top1"], 6)}))
"""

FILTER_CHILD = r"""
import json, resource, sys, time
from clipcore.config import ClipScoreConfig, FilterConfig
from clipcore.filter.stage import run_filter
data, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = FilterConfig(languages=(), clip_score=ClipScoreConfig(enabled=True, model=f"{data}/hf_clip", batch_size=512))
t = time.perf_counter()
result = run_filter(f"{data}/ingest_{n}", config, out, progress=False)
print(json.dumps({"s": time.perf_counter() - t, "mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "check": result.kept.height}))
"""


def smooth_image(rng: np.random.Generator) -> Image.Image:
    """256x256 RGB: 16x16 noise upsampled bicubically, plus fine grain (JPEG sizes like web photos')."""
    coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC)
    grain = rng.normal(0, 12, (256, 256, 3))
    return Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))


def make_images(data: Path, count: int) -> None:
    """`count` JPEGs, set.csv (path, label) and captions.csv (path, caption) naming them."""
    if (data / "set.csv").exists() and len((data / "set.csv").read_text().splitlines()) > count:
        return
    rng = np.random.default_rng(0)
    (data / "images").mkdir(parents=True, exist_ok=True)
    labels, captions = ["path,label"], ["path,caption"]
    for i in range(count):
        smooth_image(rng).save(data / "images" / f"{i}.jpg", quality=90)
        label = CLASSES[i % len(CLASSES)]
        labels.append(f"images/{i}.jpg,{label}")
        captions.append(f"images/{i}.jpg,a {' '.join(rng.choice(WORDS, 3))} {label}")
    (data / "set.csv").write_text("\n".join(labels) + "\n")
    (data / "captions.csv").write_text("\n".join(captions) + "\n")
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def make_checkpoint(data: Path, image_size: int = 128) -> None:
    """A tiny (untrained) ViT CLIP at `image_size` px RGB with the fashion_mnist templates, in data/checkpoint."""
    import torch

    from clipcore.config import ModelConfig
    from clipcore.model.clip_model import build_model, save_checkpoint, save_templates
    from clipcore.model.prompts import load_templates
    from clipcore.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    templates = load_templates("fashion_mnist")
    tokenizer = train_tokenizer([t.format(c) for t in templates for c in CLASSES] * 3, 400, 16)
    model = build_model(ModelConfig(image_size=image_size, channels=3, patch_size=16, vision_width=64, vision_heads=2,
                                    text_width=32, text_heads=2, embed_dim=32, vocab_size=400), tokenizer)
    save_checkpoint(data / "checkpoint", model, tokenizer)
    save_templates(data / "checkpoint", templates)


def make_hf_clip(directory: Path) -> None:
    """A tiny (untrained) ViT CLIP at 32 px RGB, written as a Hugging Face directory by this code's exporter
    (CLIPModel, tokenizer, CLIPImageProcessor): what `filter.clip_score.model` loads."""
    import torch

    from clipcore.config import ModelConfig
    from clipcore.model.clip_model import build_model
    from clipcore.model.export import write_hf
    from clipcore.model.tokenizer import train_tokenizer

    torch.manual_seed(1)
    tokenizer = train_tokenizer([" ".join(WORDS + CLASSES)] * 20, 400, 24)
    model = build_model(ModelConfig(image_size=32, channels=3, patch_size=8, vision_width=32, vision_heads=2,
                                    text_width=32, text_heads=2, embed_dim=24, vocab_size=400, context_length=24),
                        tokenizer)
    write_hf(model, tokenizer, directory)


def make_ingest(data: Path, rows: int) -> None:
    """An ingest folder of the first `rows` captions (this code's ingest; both versions filter the same folder)."""
    from clipcore.config import IngestConfig
    from clipcore.ingest.stage import ingest

    if (data / f"ingest_{rows}").exists():
        return
    lines = (data / "captions.csv").read_text().splitlines()[: rows + 1]
    (data / f"captions_{rows}.csv").write_text("\n".join(lines) + "\n")
    ingest(IngestConfig(input=str(data / f"captions_{rows}.csv"), url_col="path", local_paths=True,
                        data_root=str(data), shard_size=2000, processes=2, threads=2), data / f"ingest_{rows}",
           progress=False)


def measure(src: Path, child: str, data: Path, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", child, str(data), str(rows), out], env=env,
                              cwd=src, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{src}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 8_000, 32_000])
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure beside this one")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "eval_memory_data")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    versions = {"before": args.before.resolve()} if args.before else {}
    versions["this"] = here
    make_images(args.data, max(args.sizes))
    if not (args.data / "checkpoint").exists():
        make_checkpoint(args.data)
    if not (args.data / "hf_clip").exists():
        make_hf_clip(args.data / "hf_clip")
    lines = [f"{'task':<10} {'code':<7} {'images':>7} {'peak RSS MiB':>13} {'seconds':>8}  check "
             "(zero-shot top-1 / kept rows)"]
    print(lines[0], flush=True)
    for task, child in (("zero-shot", ZERO_SHOT_CHILD), ("clip-score", FILTER_CHILD)):
        for rows in args.sizes:
            if task == "clip-score":
                make_ingest(args.data, rows)
            for name, src in versions.items():
                r = measure(src, child, args.data, rows)
                lines.append(f"{task:<10} {name:<7} {rows:>7} {r['mib']:>13.0f} {r['s']:>8.1f}  {r['check']}")
                print(lines[-1], flush=True)
    if args.out:
        args.out.write_text(__doc__.split("\n\n")[0] + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
