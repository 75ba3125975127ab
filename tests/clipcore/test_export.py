"""Export to Hugging Face and open_clip, and training initialised from an open_clip directory.

Every exported directory is loaded by the other library alone, in a fresh process (offline), and its answers are
compared with ours on the same images, labels and templates: clipcore.evaluate.predict's zero-shot probabilities
and embeddings.
"""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.config import ModelConfig
from clipcore.evaluate.evaluation import embed_texts
from clipcore.evaluate.predict import embed_image_bytes, zero_shot_probabilities
from clipcore.model.clip_model import build_model, load_checkpoint, save_checkpoint, save_templates
from clipcore.model.export import export_model
from clipcore.model.open_clip_format import clip_config_from_open_clip
from clipcore.model.tokenizer import tokenize, train_tokenizer
from clipcore.model.towers import load_pretrained_tokenizer
from tests.clipcore.test_towers import save_tiny_hf_clip

TINY = dict(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, vocab_size=300)
CAPTIONS = ["a photo of a coat", "cheap sneakers free shipping", "a black and white photo of a dress",
            "vintage ankle boot in great condition, barely worn", "bag", "a photo of a shirt"]
LABELS = ["coat", "bag", "ankle boot", "dress"]
TEMPLATES = ["a photo of a {}.", "a black and white photo of the {}, barely worn, in great condition", "{}"]
LONG = "a very long caption about a vintage black and white ankle boot in great condition that was barely worn"
# square and even-margin sizes: transformers' center crop floors an odd margin's half where torchvision rounds it
GRAY_SIZES = [(28, 28), (40, 40), (28, 36), (50, 30)]


def save_tiny_checkpoint(directory: Path, **fields) -> Path:
    """A tiny random model (1-channel 28 px by default) whose stored logit scale is above its clamp."""
    torch.manual_seed(0)
    config = ModelConfig(**TINY, logit_scale_max=12.0, **fields)
    tokenizer = load_pretrained_tokenizer(config) or train_tokenizer(CAPTIONS * 20, 300, config.context_length)
    model = build_model(config, tokenizer)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))  # clamped to 12 wherever we use it
    save_checkpoint(directory, model, tokenizer)
    save_templates(directory, TEMPLATES)
    return directory


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def image_files(directory: Path, sizes=GRAY_SIZES, color: bool = False) -> list[Path]:
    rng = np.random.default_rng(0)
    directory.mkdir(exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        shape = (h, w, 3) if color else (h, w)
        ramp = np.linspace(0, 255, w)[None, :, None] if color else np.linspace(0, 255, w)[None, :]
        pixels = (0.5 * ramp + 0.5 * rng.integers(0, 256, size=shape)).astype(np.uint8)  # noise on a gradient
        path = directory / f"{'rgb' if color else 'gray'}{i}.png"
        path.write_bytes(png(pixels))
        paths.append(path)
    return paths


def ours(checkpoint: Path, images: list[Path], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) image embeddings and (N, C) zero-shot probabilities, as the served model computes them."""
    model, tokenizer = load_checkpoint(checkpoint)
    image_emb = embed_image_bytes(model, [p.read_bytes() for p in images])
    return image_emb, zero_shot_probabilities(model, tokenizer, image_emb, LABELS, templates)


def run_fresh(script: str, args: dict) -> dict:
    """Run `script` with `args` (JSON) in a new interpreter, offline, outside the repository; it prints one JSON
    object."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                            env=env, cwd="/", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


HF_SCRIPT = """
import json, sys
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, pipeline

def answer(a):
    return {"pipeline": zero_shot_pipeline(a), **clip_model_and_processor(a)}


def zero_shot_pipeline(a):
    classify = pipeline("zero-shot-image-classification", model=a["dir"])
    pipe = []
    for path in a["images"]:
        scores = {o["label"]: o["score"] for o in classify(path, candidate_labels=a["labels"],
                                                           hypothesis_template=a["templates"][0],
                                                           tokenizer_kwargs={"truncation": True})}
        pipe.append([scores[label] for label in a["labels"]])
    return pipe


@torch.no_grad()
def clip_model_and_processor(a):
    model, processor = CLIPModel.from_pretrained(a["dir"]).eval(), CLIPProcessor.from_pretrained(a["dir"])
    pixels = processor(images=[Image.open(p) for p in a["images"]], return_tensors="pt")["pixel_values"]
    image_emb = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    classifier = []
    for label in a["labels"]:  # CLIP's prompt ensemble: mean of unit text embeddings, renormalized
        tokens = processor(text=[t.format(label) for t in a["templates"]], return_tensors="pt", padding=True,
                           truncation=True)  # to the model's context length, as we do
        emb = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        classifier.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    probs = (model.logit_scale.exp() * image_emb @ torch.stack(classifier).T).softmax(-1)
    ids = processor.tokenizer(a["texts"], padding="max_length", truncation=True)["input_ids"]
    return {"ensemble": probs.tolist(), "image_emb": image_emb.tolist(), "ids": ids, "pixels": list(pixels.shape),
            "logit_scale": model.logit_scale.exp().item()}


print(json.dumps({name: answer(job) for name, job in json.loads(sys.argv[1]).items()}))
"""


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory) -> dict:
    """Per case: the checkpoint, its exported directory, the images and what transformers computed from the export
    (one fresh process for all cases)."""
    root = tmp_path_factory.mktemp("hf")
    rgb = dict(channels=3, image_size=32, patch_size=8, image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    cases = {"gray": ({}, image_files(root / "gray")),
             "colour": ({}, image_files(root / "colour", sizes=[(28, 28), (40, 40)], color=True)),
             "rgb_model": (rgb, image_files(root / "rgb", sizes=[(32, 32), (48, 40)], color=True)),
             # a pretrained CLIP directory's own tokenizer (pads with its end-of-text token), 24 positions cut to 12
             "pretrained": (dict(pretrained=str(save_tiny_hf_clip(root / "hf_clip")), context_length=12),
                            image_files(root / "pre", sizes=[(32, 32), (48, 40)], color=True))}
    out, jobs = {}, {}
    for name, (fields, images) in cases.items():
        checkpoint = save_tiny_checkpoint(root / f"ckpt_{name}", **fields)
        directory = export_model(checkpoint, root / f"hf_{name}", "hf")
        out[name] = dict(checkpoint=checkpoint, directory=directory, images=images)
        jobs[name] = dict(dir=str(directory), images=[str(p) for p in images], labels=LABELS, templates=TEMPLATES,
                          texts=CAPTIONS + [LONG])
    for name, answer in run_fresh(HF_SCRIPT, jobs).items():
        out[name]["answer"] = answer
    return out


def test_hf_pipeline_gives_our_zero_shot_probabilities(hf_exports):
    case = hf_exports["gray"]
    _, probs = ours(case["checkpoint"], case["images"], TEMPLATES[:1])  # the pipeline takes one template
    torch.testing.assert_close(torch.tensor(case["answer"]["pipeline"]), probs, atol=1e-4, rtol=0)
    assert probs.max() < 0.9  # not saturated: the comparison means something


def test_hf_clip_model_and_processor_give_our_embeddings_and_ensemble(hf_exports):
    case = hf_exports["gray"]
    answer, images = case["answer"], case["images"]
    image_emb, probs = ours(case["checkpoint"], images, TEMPLATES)
    torch.testing.assert_close(torch.tensor(answer["image_emb"]), image_emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(answer["ensemble"]), probs, atol=1e-4, rtol=0)
    model, tokenizer = load_checkpoint(case["checkpoint"])
    assert answer["ids"] == tokenize(tokenizer, CAPTIONS + [LONG]).tolist()  # padded and truncated alike
    assert answer["pixels"] == [len(images), 3, 28, 28]
    assert answer["logit_scale"] == pytest.approx(12.0) == model.scale().item()  # clamped, as we apply it
    assert {p.name for p in case["directory"].iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
        "templates.txt"}


def test_hf_export_of_colour_images_differs_only_by_our_gray_rounding(hf_exports):
    """A 1-channel model sees an RGB image through torchvision's grayscale, truncated to 8 bits; the export sums the
    channels in its first layer without that rounding: about 1/255 per pixel."""
    case = hf_exports["colour"]
    image_emb, probs = ours(case["checkpoint"], case["images"], TEMPLATES)
    difference = (torch.tensor(case["answer"]["image_emb"]) - image_emb).abs().max().item()
    assert 0 < difference < 0.02
    torch.testing.assert_close(torch.tensor(case["answer"]["ensemble"]), probs, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.tensor(case["answer"]["pipeline"]), ours(case["checkpoint"], case["images"],
                                                                              TEMPLATES[:1])[1], atol=0.01, rtol=0)


@pytest.mark.parametrize("name", ["rgb_model", "pretrained"])
def test_rgb_and_pretrained_models_export_unchanged(hf_exports, name):
    case = hf_exports[name]
    image_emb, probs = ours(case["checkpoint"], case["images"], TEMPLATES)
    torch.testing.assert_close(torch.tensor(case["answer"]["image_emb"]), image_emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(case["answer"]["ensemble"]), probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(case["answer"]["pipeline"]), ours(case["checkpoint"], case["images"],
                                                                              TEMPLATES[:1])[1], atol=1e-4, rtol=0)
    model, tokenizer = load_checkpoint(case["checkpoint"])
    assert case["answer"]["ids"] == tokenize(tokenizer, CAPTIONS + [LONG]).tolist()
    processor = json.loads((case["directory"] / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == (list(model.config.image_mean),
                                                                 list(model.config.image_std))


@pytest.mark.parametrize(("towers", "named"), [(dict(image_tower="resnet18"), "image tower 'resnet18'"),
                                               (dict(text_tower="minilm"), "text tower 'minilm'")])
@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_towers_without_an_equivalent_are_refused(tmp_path, towers, named, fmt):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", **towers)
    with pytest.raises(ValueError, match=f"cannot export a model with the {named} as {fmt}"):
        export_model(checkpoint, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # nothing left


def test_existing_folder_is_not_overwritten(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_model(checkpoint, tmp_path / "out", "hf")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


OPEN_CLIP_SCRIPT = """
import json, sys
import open_clip, torch
from PIL import Image

a = json.loads(sys.argv[1])
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + a["dir"])
tokenizer = open_clip.get_tokenizer("local-dir:" + a["dir"])
model.eval()
ids = tokenizer(a["texts"])
with torch.no_grad():
    text_emb = model.encode_text(ids, normalize=True)
    image_emb = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in a["images"]]), normalize=True)
print(json.dumps({"ids": ids.tolist(), "text_emb": text_emb.tolist(), "image_emb": image_emb.tolist(),
                  "logit_scale": model.logit_scale.exp().item()}))
"""


def test_open_clip_loads_the_export_and_gives_our_embeddings(tmp_path):
    pytest.importorskip("open_clip")
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    directory = export_model(checkpoint, tmp_path / "open_clip", "open_clip")
    # open_clip resizes with PIL: images already at the model's size pass through its transform unchanged
    images = image_files(tmp_path / "images", sizes=[(28, 28)] * 3)
    texts = CAPTIONS + [LONG]
    answer = run_fresh(OPEN_CLIP_SCRIPT, dict(dir=str(directory), images=[str(p) for p in images], texts=texts))
    model, tokenizer = load_checkpoint(checkpoint)
    assert answer["ids"] == tokenize(tokenizer, texts).tolist()
    torch.testing.assert_close(torch.tensor(answer["text_emb"]), embed_texts(model, tokenizer, texts), atol=1e-5,
                               rtol=0)
    image_emb, _ = ours(checkpoint, images, TEMPLATES)
    torch.testing.assert_close(torch.tensor(answer["image_emb"]), image_emb, atol=1e-5, rtol=0)
    assert answer["logit_scale"] == pytest.approx(12.0)


def test_training_starts_from_our_open_clip_export(tmp_path):
    """Round trip without open_clip: export, then `model.pretrained` = that directory rebuilds the same network
    (as an RGB model whose mean/std are the export's)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    directory = export_model(checkpoint, tmp_path / "open_clip", "open_clip")
    original, original_tokenizer = load_checkpoint(checkpoint)
    config = ModelConfig(context_length=original.config.context_length, pretrained=str(directory))
    tokenizer = load_pretrained_tokenizer(config)
    model = build_model(config, tokenizer).eval()
    assert (model.config.channels, model.config.image_size, model.config.embed_dim) == (3, 28, 16)
    assert model.config.image_mean == (pytest.approx(0.44916, abs=1e-5),) * 3
    assert torch.equal(tokenize(tokenizer, CAPTIONS + [LONG]), tokenize(original_tokenizer, CAPTIONS + [LONG]))
    gray = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    ids = tokenize(tokenizer, CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(model.normalize(gray)),
                                   original.encode_image(original.normalize(gray)), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(ids), original.encode_text(ids), atol=1e-6, rtol=0)
    assert model.scale().item() == pytest.approx(12.0)


def save_open_clip_dir(directory: Path, preprocess: dict | None = None) -> Path:
    """A tiny randomly initialised open_clip CLIP saved the way open_clip's hub repositories are: its model config
    (open_clip's default tokenizer, GELU), open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                 "patch_size": 8},
                 "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(1)
    model = open_clip.CLIP(**model_cfg)
    directory.mkdir()
    save_file(model.state_dict(), str(directory / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, **({"preprocess_cfg": preprocess} if preprocess else {})}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    return directory


def test_training_starts_from_an_open_clip_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    directory = save_open_clip_dir(tmp_path / "oc", {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    reference.eval()
    config = ModelConfig(context_length=20, pretrained=str(directory))
    tokenizer = load_pretrained_tokenizer(config)
    model = build_model(config, tokenizer).eval()
    assert (model.config.image_mean, model.config.image_std) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert (model.config.image_size, model.config.embed_dim, model.config.channels) == (32, 24, 3)
    texts = ["a photo of a coat", "Cheap sneakers, FREE shipping!!", "a black-and-white photo of a dress", LONG]
    reference_ids = open_clip.get_tokenizer(f"local-dir:{directory}")(texts)  # (4, 20), padded with 0
    ids = tokenize(tokenizer, texts)  # padded with <|endoftext|>, which the causal mask hides from the pooled token
    lengths = (reference_ids != 0).sum(1)
    assert all(torch.equal(ids[i, :n], reference_ids[i, :n]) for i, n in enumerate(lengths.tolist()))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), reference.encode_text(reference_ids, normalize=True),
                                   atol=1e-6, rtol=0)
        pixels = preprocess(image)[None]  # open_clip's own preprocessing, with the checkpoint's mean/std
        torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels, normalize=True),
                                   atol=1e-6, rtol=0)
        ours_pixels = model.normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None])
        torch.testing.assert_close(ours_pixels, pixels, atol=1e-6, rtol=0)  # normalisation follows the checkpoint
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_training_from_an_open_clip_checkpoint_runs(tmp_path):
    pytest.importorskip("open_clip")
    from tests.clipcore.test_towers import train_toy

    config = ModelConfig(context_length=12, pretrained=str(save_open_clip_dir(tmp_path / "oc")))
    tokenizer = load_pretrained_tokenizer(config)
    model = build_model(config, tokenizer)
    before = model.clip.vision_model.embeddings.patch_embedding.weight.clone()
    result = train_toy(model, tokenizer, tmp_path / "stream")
    assert len(result.history) == 2 and all(math.isfinite(r["loss"]) for r in result.history)
    assert not torch.equal(before, model.clip.vision_model.embeddings.patch_embedding.weight)


@pytest.mark.parametrize(("change", "field"), [(("vision_cfg", "timm_model_name", "resnet50"), "timm_model_name"),
                                               (("text_cfg", "hf_model_name", "bert-base-uncased"), "hf_model_name"),
                                               (("vision_cfg", "layers", [3, 4, 6, 3]), "layers"),
                                               (("text_cfg", "pool_type", "last"), "pool_type")])
def test_open_clip_configs_without_a_clip_equivalent_are_refused(change, field):
    model_cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
                 "text_cfg": {"width": 32, "heads": 2, "layers": 1}}
    part, key, value = change
    model_cfg[part][key] = value
    with pytest.raises(ValueError, match=field):
        clip_config_from_open_clip(model_cfg)
