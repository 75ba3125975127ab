"""The CLIP model: transformers' CLIPModel (ViT image tower, causal text tower, linear projections)
plus the learnable logit scale and bias, and its safetensors checkpoint format.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from transformers.utils import logging as hf_logging

from clipcore.config import ModelConfig, from_dict
from clipcore.tokenizer import EOT, PAD, SOT, load_tokenizer

hf_logging.set_verbosity_error()  # tiny configs trip transformers' warnings about CLIP's default token ids


class ClipModel(nn.Module):
    """Two towers mapping images and token ids to L2-normalized embeddings in one space.

    `logit_scale` is stored as a log (CLIP: log(1/0.07)) and clamped so exp() stays <= `logit_scale_max`;
    `logit_bias` is used only by the SigLIP loss.
    """

    def __init__(self, config: ModelConfig, pad_id: int = 0, sot_id: int = 2, eot_id: int = 3,
                 logit_bias_init: float = 0.0):
        super().__init__()
        self.config = config
        text = CLIPTextConfig(
            vocab_size=config.vocab_size, hidden_size=config.text_width, intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
            max_position_embeddings=config.context_length, pad_token_id=pad_id, bos_token_id=sot_id,
            eos_token_id=eot_id,
        )
        vision = CLIPVisionConfig(
            hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
            num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
            image_size=config.image_size, patch_size=config.patch_size, num_channels=config.channels,
        )
        clip_config = CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config.embed_dim,
            logit_scale_init_value=math.log(config.logit_scale_init),
        )
        self.clip = CLIPModel(clip_config)
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        self.max_log_scale = math.log(config.logit_scale_max)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) normalized pixels -> (B, D) unit-norm embeddings."""
        emb = self.clip.get_image_features(pixel_values=pixels).pooler_output  # (B, D), projected
        return nn.functional.normalize(emb, dim=-1)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, D) unit-norm embeddings (pooled at the end-of-text token)."""
        emb = self.clip.get_text_features(input_ids=token_ids).pooler_output  # (B, D)
        return nn.functional.normalize(emb, dim=-1)

    def forward(self, pixels: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers at once (what DistributedDataParallel wraps): (B, D) image and (B, D) text embeddings."""
        return self.encode_image(pixels), self.encode_text(token_ids)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at `logit_scale_max`."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the stored log-scale inside [0, log(max)] (done after every optimizer step, as in CLIP)."""
        self.logit_scale.clamp_(0, self.max_log_scale)


def build_model(config: ModelConfig, tokenizer: Tokenizer, logit_bias_init: float = 0.0) -> ClipModel:
    """A freshly initialized `ClipModel` whose special token ids match `tokenizer`."""
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens > model.vocab_size={config.vocab_size}")
    ids = {t: tokenizer.token_to_id(t) for t in (PAD, SOT, EOT)}
    return ClipModel(config, ids[PAD], ids[SOT], ids[EOT], logit_bias_init)


def save_checkpoint(directory: str | Path, model: ClipModel, tokenizer: Tokenizer) -> Path:
    """Write `model.safetensors`, `config.json` and `tokenizer.json` to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2))
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[ClipModel, Tokenizer]:
    """Load what `save_checkpoint` wrote; the model comes back in eval mode."""
    directory = Path(directory)
    config = from_dict(ModelConfig, json.loads((directory / "config.json").read_text()), "config.json")
    tokenizer = load_tokenizer(directory / "tokenizer.json", config.context_length)
    model = build_model(config, tokenizer)
    load_model(model, str(directory / "model.safetensors"), device=device)
    return model.eval(), tokenizer
