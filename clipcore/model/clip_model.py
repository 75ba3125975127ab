"""The CLIP model: an image and a text tower mapping to one space (by default transformers' CLIPModel: a ViT, a causal
text transformer and linear projections; clipcore/model/towers.py has the others), the learnable logit scale and bias,
and its safetensors checkpoint format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer
from torch import nn
from transformers.utils import logging as hf_logging

from clipcore.config import ModelConfig
from clipcore.data.images import LEGACY_MEAN, LEGACY_STD, channel_stats, normalize_uint8
from clipcore.model.prompts import load_templates
from clipcore.model.tokenizer import EOT, PAD, SOT, load_tokenizer
from clipcore.model.towers import (
    build_image_tower,
    build_joint_clip,
    build_text_tower,
    check_towers,
    resolve_model_config,
)
from clipcore.params import from_dict

TEMPLATES_FILE = "templates.txt"
hf_logging.set_verbosity_error()  # tiny configs trip transformers' warnings about CLIP's default token ids


class ClipModel(nn.Module):
    """Two towers mapping images and token ids to L2-normalized embeddings in one space.

    A ViT with CLIP's text tower (the default, or a `pretrained` CLIP directory) is one transformers `CLIPModel`
    (`self.clip`); any other pair is `self.image_tower` + `self.text_tower`. `architecture` holds the transformers
    configs stored in a checkpoint (`towers.json`): given, pretrained towers are rebuilt from it, randomly initialized,
    instead of read from their folders. `logit_scale` is stored as a log (CLIP: log(1/0.07)) and clamped so exp()
    stays <= `logit_scale_max`; `logit_bias` is used only by the SigLIP loss.
    """

    def __init__(self, config: ModelConfig, pad_id: int = 0, sot_id: int = 2, eot_id: int = 3,
                 logit_bias_init: float = 0.0, architecture: dict | None = None):
        super().__init__()
        check_towers(config)
        self.config = config
        if config.image_tower == "vit" and config.text_tower == "clip":
            self.clip = build_joint_clip(config, pad_id, sot_id, eot_id, architecture)
        else:
            self.image_tower = build_image_tower(config)
            self.text_tower = build_text_tower(config, pad_id, sot_id, eot_id, architecture)
            self.log_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        self.max_log_scale = math.log(config.logit_scale_max)
        for module in self.locked_modules():
            module.requires_grad_(False).eval()

    @property
    def joint(self) -> bool:
        """Both towers live in one transformers CLIPModel."""
        return "clip" in self._modules

    def locked_modules(self) -> list[nn.Module]:
        """The frozen pretrained text encoder under `lock_text` (its projection still trains)."""
        if not self.config.lock_text:
            return []
        return [self.clip.text_model] if self.joint else [self.text_tower.encoder]

    def train(self, mode: bool = True) -> ClipModel:
        """nn.Module.train, except that a locked text encoder stays in eval mode (LiT: no dropout)."""
        super().train(mode)
        for module in self.locked_modules():
            module.eval()
        return self

    def architecture(self) -> dict:
        """The transformers configs that rebuild pretrained towers without their original folders."""
        if self.config.pretrained:
            return {"clip": json.loads(self.clip.config.to_json_string(use_diff=False))}
        if self.config.text_tower == "minilm":
            return {"text": json.loads(self.text_tower.encoder.config.to_json_string(use_diff=False))}
        return {}

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale if self.joint else self.log_scale

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C', H, W) or (B, H, W) uint8 images -> (B, C, H, W) float input of `encode_image`, normalized with the
        model's own `image_mean` / `image_std`."""
        return normalize_uint8(images, *channel_stats(self.config.image_mean, self.config.image_std,
                                                      self.config.channels))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, S', S') normalized pixels -> (B, D) unit-norm embeddings, or with `normalize=False` the projections
        before L2 normalization (other sizes and channel counts are fitted to the tower's `image_size` and `channels`,
        see `fit_pixels`)."""
        pixels = fit_pixels(pixels, self.config.channels, self.config.image_size)  # (B, C, S, S)
        if self.joint:
            emb = self.clip.get_image_features(pixel_values=pixels).pooler_output  # (B, D), projected
        else:
            emb = self.image_tower(pixels)  # (B, D)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, D) unit-norm embeddings, or with `normalize=False` the projections before L2
        normalization (CLIP's tower pools at the end-of-text token, MiniLM's averages the non-padding tokens)."""
        if self.joint:
            emb = self.clip.get_text_features(input_ids=token_ids).pooler_output  # (B, D)
        else:
            emb = self.text_tower(token_ids)  # (B, D)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def forward(self, pixels: torch.Tensor, token_ids: torch.Tensor,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers at once (what DistributedDataParallel wraps): (B, D) image and (B, D) text embeddings. Training
        asks for the projections before normalization (`normalize=False`): the loss normalizes them itself, and the
        `sq_euclid_raw` regularizer reads them as they are."""
        return self.encode_image(pixels, normalize), self.encode_text(token_ids, normalize)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at `logit_scale_max`."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the stored log-scale inside [0, log(max)] (done after every optimizer step, as in CLIP)."""
        self.logit_scale.clamp_(0, self.max_log_scale)


def fit_pixels(pixels: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    """Fit a (B, C', S', S') batch to the tower's input: grayscale repeated to RGB (or RGB averaged to gray) and other
    sides resized bilinearly, so e.g. a 224-pixel RGB tower still embeds 28x28 grayscale test images. A batch that
    already fits is returned as it is."""
    if pixels.shape[1] != channels:
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, channels, -1, -1)
        elif channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"images have {pixels.shape[1]} channels; the model takes {channels}")
    if tuple(pixels.shape[-2:]) != (image_size, image_size):
        pixels = nn.functional.interpolate(pixels, size=(image_size, image_size), mode="bilinear", antialias=True)
    return pixels


def build_model(config: ModelConfig, tokenizer: Tokenizer, logit_bias_init: float = 0.0,
                architecture: dict | None = None) -> ClipModel:
    """A `ClipModel` whose special token ids match `tokenizer`: freshly initialized towers, pretrained ones loaded
    from their folders (`pretrained` also overrides the architecture fields: `model.config` says what was built) or,
    with a checkpoint's `architecture`, all towers rebuilt from stored configs for `load_checkpoint` to fill in."""
    if architecture is None:
        config = resolve_model_config(config)
    if config.text_tower == "minilm":  # BERT ignores positions holding its pad id
        pad = tokenizer.padding
        if pad is None:
            raise ValueError("the MiniLM text tower needs a tokenizer that pads (see load_pretrained_tokenizer)")
        return ClipModel(config, pad["pad_id"], logit_bias_init=logit_bias_init, architecture=architecture)
    if config.pretrained:  # the CLIP directory's config carries its own special token ids
        return ClipModel(config, logit_bias_init=logit_bias_init, architecture=architecture)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens > model.vocab_size={config.vocab_size}")
    ids = {t: tokenizer.token_to_id(t) for t in (PAD, SOT, EOT)}
    return ClipModel(config, ids[PAD], ids[SOT], ids[EOT], logit_bias_init, architecture)


def save_checkpoint(directory: str | Path, model: ClipModel, tokenizer: Tokenizer) -> Path:
    """Write `model.safetensors` (every weight), `config.json`, `tokenizer.json` and, for pretrained towers,
    `towers.json` (their transformers configs) to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2))
    tokenizer.save(str(directory / "tokenizer.json"))
    architecture, towers = model.architecture(), directory / "towers.json"
    if architecture:
        towers.write_text(json.dumps(architecture, indent=2))
    elif towers.exists():  # left by an earlier checkpoint in this folder; it would rebuild the wrong towers
        towers.unlink()
    return directory


def save_templates(directory: str | Path, templates: list[str]) -> None:
    """Store the zero-shot prompt templates with a checkpoint, so a served model classifies like the evaluation."""
    (Path(directory) / TEMPLATES_FILE).write_text("\n".join(templates) + "\n")


def checkpoint_templates(directory: str | Path) -> list[str]:
    """The prompt templates stored by `save_templates`."""
    return load_templates(str(Path(directory) / TEMPLATES_FILE))


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[ClipModel, Tokenizer]:
    """Load what `save_checkpoint` wrote (never reading the pretrained folders); the model comes back in eval mode."""
    directory = Path(directory)
    stored = json.loads((directory / "config.json").read_text())
    if "image_mean" not in stored:  # written before the normalization was stored: trained with [-1, 1] pixels
        stored.update(image_mean=LEGACY_MEAN, image_std=LEGACY_STD)
    config = from_dict(ModelConfig, stored, "config.json")
    tokenizer = load_tokenizer(directory / "tokenizer.json", config.context_length)
    towers = directory / "towers.json"
    model = build_model(config, tokenizer, architecture=json.loads(towers.read_text()) if towers.exists() else {})
    load_model(model, str(directory / "model.safetensors"), device=device)
    return model.eval(), tokenizer


def checkpoint_digest(directory: str | Path) -> str:
    """sha256 over a checkpoint folder's files (names and bytes, in name order): the identity that every product
    derived from the checkpoint records, so that none is ever attached to another checkpoint."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        # name and size first: no two different folders frame to the same byte stream
        digest.update(f"{path.relative_to(directory).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
