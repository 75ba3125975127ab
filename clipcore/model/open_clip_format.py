"""open_clip's checkpoint layout for CLIP's towers (a ViT and a causal text transformer), both ways.

A transformers `CLIPModel` and open_clip's `CLIP` class are the same network (both ports of OpenAI's CLIP) under
other names: open_clip keeps q/k/v as one `in_proj`, stores its projections as (width, embed) matrices and names
the rest after OpenAI's code. This module renames weights and translates configs between the two, so that
clipcore.model.export can write an `open_clip_config.json` directory and training can start from one
(`model.pretrained`). It needs open_clip itself only for the vocabulary of its default tokenizer.

Only the plain architecture maps: open_clip configs with timm or Hugging Face towers, layer scale, attentional or
non-token pooling, custom attention blocks or text projections with a bias are refused, naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig

OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
"""Where open_clip's `local-dir:` and `hf-hub:` loaders look for a full CLIP checkpoint, in their order."""
ACTIVATIONS = {True: "quick_gelu", False: "gelu"}  # open_clip's `quick_gelu` flag -> transformers' hidden_act
LEGACY_ARGMAX_EOS = 2
"""transformers' CLIP text tower pools at the highest token id (OpenAI's rule, open_clip's `argmax`) when its
eos_token_id is 2, else at the first end-of-text token (open_clip's `eos`)."""

BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
         "mlp.c_proj": "mlp.fc2"}
TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
       "positional_embedding": "text_model.embeddings.position_embedding.weight",
       "ln_final": "text_model.final_layer_norm",
       "visual.class_embedding": "vision_model.embeddings.class_embedding",
       "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
       "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
       "visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
       "logit_scale": "logit_scale"}
PROJECTIONS = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}  # transposed
TOWERS = (("transformer", "text_model", "text_config"), ("visual.transformer", "vision_model", "vision_config"))

# open_clip config fields whose non-default values have no transformers CLIP equivalent
UNSUPPORTED = {
    "vision_cfg": {"timm_model_name": None, "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                   "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
                   "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                   "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "act_kwargs": None},
    "text_cfg": {"hf_model_name": None, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                 "final_ln_after_pool": False, "proj_bias": False, "proj_type": "linear", "block_type": None,
                 "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                 "scale_attn": False, "scale_fc": False, "act_kwargs": None, "tokenizer_mode": None},
}


def _pairs(config: CLIPConfig) -> list[tuple[str, str]]:
    """(open_clip key, transformers key) of every weight that only changes its name."""
    pairs = []
    for name, hf in TOP.items():
        pairs += [(name, hf)] if name.endswith(("weight", "embedding", "scale")) else \
            [(f"{name}.{p}", f"{hf}.{p}") for p in ("weight", "bias")]
    for oc, hf, sub in TOWERS:
        for i in range(getattr(config, sub).num_hidden_layers):
            for block, hf_block in BLOCK.items():
                pairs += [(f"{oc}.resblocks.{i}.{block}.{p}", f"{hf}.encoder.layers.{i}.{hf_block}.{p}")
                          for p in ("weight", "bias")]
    return pairs


def to_open_clip_state(state: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict -> open_clip CLIP's."""
    out = {oc: state[hf] for oc, hf in _pairs(config)}
    out.update({oc: state[hf].T for oc, hf in PROJECTIONS.items()})  # (width, embed): x @ proj
    for oc, hf, sub in TOWERS:
        for i in range(getattr(config, sub).num_hidden_layers):
            attn = f"{hf}.encoder.layers.{i}.self_attn"
            for p in ("weight", "bias"):
                out[f"{oc}.resblocks.{i}.attn.in_proj_{p}"] = torch.cat([state[f"{attn}.{x}_proj.{p}"] for x in "qkv"])
    return {k: v.contiguous() for k, v in out.items()}


def from_open_clip_state(state: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict -> a transformers CLIPModel's (its `logit_bias`, a SigLIP term, is dropped)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("text.") for k in state):  # CustomTextCLIP keeps the text transformer under `text.`
        state = {k.removeprefix("text."): v for k, v in state.items()}
    out = {hf: state[oc] for oc, hf in _pairs(config)}
    out["logit_scale"] = out["logit_scale"].reshape(())
    out.update({hf: state[oc].T for oc, hf in PROJECTIONS.items()})
    for oc, hf, sub in TOWERS:
        for i in range(getattr(config, sub).num_hidden_layers):
            attn = f"{hf}.encoder.layers.{i}.self_attn"
            for p in ("weight", "bias"):
                for x, part in zip("qkv", state[f"{oc}.resblocks.{i}.attn.in_proj_{p}"].chunk(3), strict=True):
                    out[f"{attn}.{x}_proj.{p}"] = part
    return {k: v.contiguous() for k, v in out.items()}


def _check_plain(model_cfg: dict) -> None:
    """Refuse open_clip configs that transformers' CLIPModel cannot express, naming the first such field."""
    for part, defaults in UNSUPPORTED.items():
        cfg = model_cfg.get(part, {})
        for key, default in defaults.items():
            if cfg.get(key, default) not in (default, "default"):
                raise ValueError(f"open_clip {part}.{key}={cfg[key]!r} has no transformers CLIP equivalent; only "
                                 "ViT + text-transformer CLIP models convert")
    for key in ("layers", "image_size", "patch_size"):
        if not isinstance(model_cfg["vision_cfg"].get(key, 0), int):
            raise ValueError(f"open_clip vision_cfg.{key}={model_cfg['vision_cfg'][key]!r}: only a ViT with square "
                             "images and patches converts (ResNets and rectangular inputs do not)")
    if model_cfg["text_cfg"].get("pool_type", "argmax") not in ("argmax", "eos"):
        raise ValueError(f"open_clip text_cfg.pool_type={model_cfg['text_cfg']['pool_type']!r}: only argmax or eos "
                         "pooling converts")
    if "multimodal_cfg" in model_cfg:
        raise ValueError("open_clip CoCa models (multimodal_cfg) do not convert to a CLIP model")


def _eps(cfg: dict) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5))


def _mlp_width(cfg: dict) -> int:
    return int(cfg["width"] * cfg.get("mlp_ratio", 4.0))  # open_clip's rounding


def clip_config_from_open_clip(model_cfg: dict) -> CLIPConfig:
    """The transformers CLIPConfig of an open_clip `model_cfg` (open_clip's defaults filled in).

    Raises:
        ValueError: the config uses a tower or option that transformers' CLIP cannot express.
    """
    _check_plain(model_cfg)
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = ACTIVATIONS[bool(model_cfg.get("quick_gelu", False))]
    argmax = text.get("pool_type", "argmax") == "argmax"
    eos = LEGACY_ARGMAX_EOS if argmax else text.get("eos_id", 2)
    return CLIPConfig(
        projection_dim=model_cfg["embed_dim"],
        text_config=dict(vocab_size=text.get("vocab_size", 49408), hidden_size=text.get("width", 512),
                         intermediate_size=_mlp_width({"width": text.get("width", 512), **text}),
                         num_hidden_layers=text.get("layers", 12), num_attention_heads=text.get("heads", 8),
                         max_position_embeddings=text.get("context_length", 77), hidden_act=act,
                         layer_norm_eps=_eps(text), pad_token_id=text.get("pad_id", 0), eos_token_id=eos),
        vision_config=dict(hidden_size=vision.get("width", 768),
                           intermediate_size=_mlp_width({"width": vision.get("width", 768), **vision}),
                           num_hidden_layers=vision.get("layers", 12),
                           num_attention_heads=vision.get("width", 768) // vision.get("head_width", 64),
                           image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 16),
                           num_channels=3, hidden_act=act, layer_norm_eps=_eps(vision)),
    )


def open_clip_model_cfg(config: CLIPConfig) -> dict:
    """open_clip's `model_cfg` for a transformers CLIPConfig (an RGB ViT and a CLIP text transformer).

    Raises:
        ValueError: an activation, MLP width or head count that open_clip's config cannot express.
    """
    text, vision = config.text_config, config.vision_config
    if text.hidden_act != vision.hidden_act or text.hidden_act not in ACTIVATIONS.values():
        raise ValueError(f"open_clip takes one activation for both towers, quick_gelu or gelu; this model has "
                         f"{text.hidden_act} (text) and {vision.hidden_act} (image)")

    def tower(cfg, **extra) -> dict:
        ratio = cfg.intermediate_size / cfg.hidden_size
        if int(cfg.hidden_size * ratio) != cfg.intermediate_size or cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"open_clip cannot express width {cfg.hidden_size} with MLP {cfg.intermediate_size} and "
                             f"{cfg.num_attention_heads} heads")
        out = dict(width=cfg.hidden_size, layers=cfg.num_hidden_layers, mlp_ratio=ratio, **extra)
        if cfg.layer_norm_eps != 1e-5:
            out["norm_kwargs"] = {"eps": cfg.layer_norm_eps}
        return out

    argmax = text.eos_token_id == LEGACY_ARGMAX_EOS
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": text.hidden_act == "quick_gelu",
        "vision_cfg": tower(vision, image_size=vision.image_size, patch_size=vision.patch_size,
                            head_width=vision.hidden_size // vision.num_attention_heads),
        "text_cfg": tower(text, context_length=text.max_position_embeddings, vocab_size=text.vocab_size,
                          heads=text.num_attention_heads, pad_id=text.pad_token_id,
                          pool_type="argmax" if argmax else "eos", eos_id=text.eos_token_id,
                          # open_clip's local-dir: loader reads the tokenizer files beside this config
                          hf_tokenizer_name="."),
    }


def is_open_clip_dir(directory: str | Path) -> bool:
    """An open_clip directory (`open_clip_config.json`) that is not also a transformers CLIP directory (those are
    read as transformers', which Hugging Face repositories of open_clip models often carry too)."""
    directory = Path(directory)
    return (directory / OPEN_CLIP_CONFIG).is_file() and not (directory / "config.json").is_file()


def read_open_clip_config(directory: str | Path) -> dict:
    """`open_clip_config.json`: {"model_cfg": ..., "preprocess_cfg": ...}."""
    path = Path(directory) / OPEN_CLIP_CONFIG
    config = json.loads(path.read_text())
    if "model_cfg" not in config:
        raise ValueError(f"{path} has no model_cfg")
    return config


def open_clip_stats(directory: str | Path) -> dict[str, tuple[float, ...]]:
    """The checkpoint's pixel mean/std (its preprocess_cfg; open_clip's default is OpenAI's constants)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    preprocess = read_open_clip_config(directory).get("preprocess_cfg", {})
    return {"image_mean": tuple(preprocess.get("mean", OPENAI_CLIP_MEAN)),
            "image_std": tuple(preprocess.get("std", OPENAI_CLIP_STD))}


def load_open_clip_as_hf(directory: str | Path):
    """A transformers CLIPModel holding the open_clip checkpoint in `directory`, in eval mode."""
    from safetensors.torch import load_file
    from transformers import CLIPModel

    directory = Path(directory)
    config = clip_config_from_open_clip(read_open_clip_config(directory)["model_cfg"])
    weights = next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{directory}: no open_clip weights ({', '.join(WEIGHT_FILES)})")
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    model = CLIPModel(config)
    result = model.load_state_dict(from_open_clip_state(state, config), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]  # a buffer, not a weight
    if missing or result.unexpected_keys:
        raise ValueError(f"{weights} does not fit its config: missing {missing[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}")
    return model.eval()


def open_clip_hf_tokenizer(directory: str | Path):
    """The tokenizer open_clip would use for this directory, as a transformers tokenizer: the files in the directory
    when its text_cfg names an HF tokenizer (what open_clip's local-dir: loader reads), else CLIP's BPE built from
    the vocabulary open_clip ships (its SimpleTokenizer's ids)."""
    from transformers import AutoTokenizer, CLIPTokenizer

    text_cfg = read_open_clip_config(directory)["model_cfg"].get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        return AutoTokenizer.from_pretrained(str(directory))
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError as err:
        raise ImportError(f"{directory} uses open_clip's default tokenizer, whose vocabulary ships with open_clip: "
                          "pip install open-clip-torch") from err
    simple = SimpleTokenizer()
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): i for token, i in simple.encoder.items()}
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)
