"""Our checkpoints as folders that other libraries load on their own: a Hugging Face CLIP directory
(`transformers.CLIPModel.from_pretrained`, `CLIPProcessor`, the zero-shot-image-classification pipeline) and an
open_clip directory (`open_clip.create_model_and_transforms("local-dir:DIR")`).

Both hold the model as those libraries run it, which differs from our checkpoint in three ways, none of which
changes an embedding:
- RGB input. Their image pipelines always produce 3 channels, so a 1-channel model's patch embedding is spread over
  R, G and B with torchvision's grayscale weights (scaled to sum to 1): a gray image (R = G = B) embeds exactly as
  ours; a colour image differs only by our rounding of its gray value to 8 bits.
- Text positions cut to `context_length`, and tokenizers that truncate there (the texts we would embed).
- The learned logit scale stored clamped at `logit_scale_max`, as we apply it (neither library clamps).

Only the joint towers export (a ViT with CLIP's text transformer, i.e. one transformers `CLIPModel`): neither library
has a CLIP class for a torchvision ResNet image tower or a mean-pooled MiniLM text tower, and those are refused
instead of written as a directory that would load into a different network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from clipcore.data.images import channel_stats
from clipcore.model.clip_model import TEMPLATES_FILE, ClipModel, load_checkpoint
from clipcore.model.open_clip_format import OPEN_CLIP_CONFIG, open_clip_model_cfg, to_open_clip_state
from clipcore.model.tokenizer import EOT, PAD, SOT, UNK

FORMATS = ("hf", "open_clip")
LUMA = (0.2989, 0.587, 0.114)
"""torchvision's rgb_to_grayscale weights: how our image preprocessing turns an RGB image into a 1-channel one."""
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR: our torchvision Resize's interpolation


def check_exportable(model: ClipModel, fmt: str) -> None:
    """Refuse towers that the target library has no CLIP class for (one line, naming the tower)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if not model.joint:
        config = model.config
        tower = (f"image tower {config.image_tower!r}" if config.image_tower != "vit"
                 else f"text tower {config.text_tower!r}")
        library = "Hugging Face's CLIPModel" if fmt == "hf" else "open_clip's CLIP"
        raise ValueError(f"cannot export a model with the {tower} as {fmt}: {library} has no equivalent of it (only "
                         "model.image_tower=vit with model.text_tower=clip exports)")


def exported_clip(model: ClipModel) -> CLIPModel:
    """A copy of the model's transformers CLIPModel as other libraries run it: RGB patch embedding, text positions
    cut to `context_length`, logit scale clamped (see the module docstring)."""
    config = CLIPConfig.from_dict(model.clip.config.to_dict())
    length = model.config.context_length
    config.vision_config.num_channels = 3
    config.text_config.max_position_embeddings = length
    state = {k: v.detach().clone().float() for k, v in model.clip.state_dict().items()
             if not k.endswith("position_ids")}  # a buffer rebuilt from the config
    patch = "vision_model.embeddings.patch_embedding.weight"  # (width, C, P, P)
    if state[patch].shape[1] == 1:
        luma = torch.tensor(LUMA) / sum(LUMA)
        state[patch] = state[patch] * luma.view(1, 3, 1, 1)  # (width, 3, P, P): sum_c w_c x_c = gray when R=G=B
    positions = "text_model.embeddings.position_embedding.weight"
    state[positions] = state[positions][:length]
    state["logit_scale"] = state["logit_scale"].clamp(max=model.max_log_scale)
    clip = CLIPModel(config)
    missing = [k for k in clip.load_state_dict(state, strict=False).missing_keys if not k.endswith("position_ids")]
    if missing:
        raise RuntimeError(f"exported CLIPModel lacks {missing[:3]}")
    return clip.eval()


def rgb_stats(model: ClipModel) -> tuple[list[float], list[float]]:
    """Per-RGB-channel mean and std of the exported model's input (a 1-channel model's value on every channel,
    which the luminance-weighted patch embedding sums back to ours)."""
    mean, std = channel_stats(model.config.image_mean, model.config.image_std, model.config.channels)
    return list(mean) * (3 // len(mean)), list(std) * (3 // len(std))


def hf_tokenizer(tokenizer: Tokenizer, context_length: int) -> PreTrainedTokenizerFast:
    """Our tokenizer as a transformers fast tokenizer: same normalizer, BPE and `<sot> ... <eot>` template; padding
    and truncation (to `context_length`) left to the caller, as transformers expects."""
    backend = Tokenizer.from_str(tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    pad = (tokenizer.padding or {}).get("pad_token")
    specials = {"pad_token": pad}
    if tokenizer.token_to_id(SOT) is not None and tokenizer.token_to_id(EOT) is not None:  # ours (else pretrained)
        specials = {"pad_token": PAD, "bos_token": SOT, "eos_token": EOT, "unk_token": UNK}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=context_length, padding_side="right",
                                   truncation_side="right", **{k: v for k, v in specials.items() if v})


def save_hf_tokenizer(tokenizer: Tokenizer, context_length: int, directory: Path) -> None:
    """tokenizer.json and tokenizer_config.json, naming the generic fast tokenizer class (which transformers 4 and 5
    both load from tokenizer.json; CLIPTokenizer would rebuild CLIP's own BPE rules around our vocabulary)."""
    hf_tokenizer(tokenizer, context_length).save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))


def image_processor(model: ClipModel) -> CLIPImageProcessor:
    """Our evaluation preprocessing as a CLIPImageProcessor: RGB, shorter side resized (bilinear, antialiased) to
    `image_size`, center crop, [0, 1], the model's mean/std."""
    size = model.config.image_size
    mean, std = rgb_stats(model)
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              resample=BILINEAR, image_mean=mean, image_std=std, do_convert_rgb=True)


def write_hf(model: ClipModel, tokenizer: Tokenizer, directory: Path) -> None:
    """CLIPModel weights and config, tokenizer files and the CLIPImageProcessor, as `save_pretrained` writes them."""
    exported_clip(model).save_pretrained(directory)
    image_processor(model).save_pretrained(directory)  # preprocessor_config.json
    save_hf_tokenizer(tokenizer, model.config.context_length, directory)


def write_open_clip(model: ClipModel, tokenizer: Tokenizer, directory: Path) -> None:
    """`open_clip_config.json` (model and preprocess config), `open_clip_model.safetensors` and the tokenizer files
    its `hf_tokenizer_name` points open_clip's local-dir: loader at."""
    clip = exported_clip(model)
    mean, std = rgb_stats(model)
    config = {"model_cfg": open_clip_model_cfg(clip.config),
              "preprocess_cfg": {"mean": mean, "std": std, "interpolation": "bilinear", "resize_mode": "shortest"}}
    save_file(to_open_clip_state(clip.state_dict(), clip.config), str(directory / "open_clip_model.safetensors"))
    (directory / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2))
    save_hf_tokenizer(tokenizer, model.config.context_length, directory)


def export_model(checkpoint: str | Path, directory: str | Path, fmt: str) -> Path:
    """Write the checkpoint folder `checkpoint` (save_checkpoint's layout) as a `fmt` ("hf" or "open_clip")
    directory, with its prompt templates (templates.txt) beside it when the checkpoint has them.

    The directory appears complete or not at all (written next to it, then renamed); an existing non-empty one is
    refused rather than mixed with old files.

    Raises:
        ValueError: the format is unknown, or the model's towers have no equivalent there.
        FileExistsError: `directory` exists and is not empty.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"export: {directory} exists and is not empty; choose a new folder")
    model, tokenizer = load_checkpoint(checkpoint)
    check_exportable(model, fmt)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (write_hf if fmt == "hf" else write_open_clip)(model, tokenizer, staging)
        if (Path(checkpoint) / TEMPLATES_FILE).is_file():
            shutil.copyfile(Path(checkpoint) / TEMPLATES_FILE, staging / TEMPLATES_FILE)
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
