"""Tower options: MiniLM text tower against sentence-transformers, LiT locking, ResNet image tower, a local Hugging
Face CLIP directory against transformers itself, and checkpoint round trips of every combination."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from clipcore.config import LossConfig, ModelConfig, TrainConfig, load_params
from clipcore.model.clip_model import build_model, load_checkpoint, save_checkpoint
from clipcore.model.tokenizer import tokenize, train_tokenizer
from clipcore.model.towers import load_pretrained_tokenizer, minilm_path
from tests.clipcore.pairs import toy_stream

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = dict(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, vocab_size=300)
CAPTIONS = ["a photo of a coat", "cheap sneakers free shipping", "a black and white photo of a dress",
            "vintage ankle boot in great condition, barely worn", "bag"]


def tiny_model(context_length: int = 16, **towers):
    config = ModelConfig(**TINY, context_length=context_length, **towers)
    tokenizer = load_pretrained_tokenizer(config) or train_tokenizer(CAPTIONS * 20, 300, context_length)
    return build_model(config, tokenizer), tokenizer


def toy_task(n: int = 64):
    """Bright images captioned 'coat', dark ones 'bag'."""
    labels = torch.arange(n) % 2
    images = (labels[:, None, None] * 200 + torch.randint(0, 50, (n, 28, 28))).to(torch.uint8)  # (N, 28, 28)
    captions = ["a photo of a coat" if y else "a photo of a bag" for y in labels.tolist()]
    return images, captions, labels


def test_minilm_pooling_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model, tokenizer = tiny_model(context_length=64, text_tower="minilm")
    model.eval()
    reference = SentenceTransformer(str(minilm_path(model.config)), device="cpu")  # Transformer, Pooling, Normalize
    unnormalized = SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")
    with torch.no_grad():
        pooled = model.text_tower.pool(tokenize(tokenizer, CAPTIONS))  # (N, 384)
    expected = unnormalized.encode(CAPTIONS, convert_to_tensor=True)  # padded to the longest caption, not to 64
    assert pooled.shape == (5, 384)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1),
                               reference.encode(CAPTIONS, convert_to_tensor=True), atol=1e-5, rtol=0)


def train_toy(model, tokenizer, root, steps: int = 2, lr: float = 1e-3):
    from clipcore.train.loop import train_clip

    images, captions, _ = toy_task(8 * steps)
    config = TrainConfig(epochs=1, batch_size=8, lr=lr, warmup_steps=1, log_every=1, device="cpu")
    stream = toy_stream(root, images, captions, tokenizer, context_length=model.config.context_length)
    return train_clip(model, stream, len(captions), config, LossConfig(), progress=False)


@pytest.mark.parametrize("lock", [True, False])
def test_lock_text_freezes_only_the_pretrained_encoder(lock, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = tiny_model(text_tower="minilm", lock_text=lock)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.text_tower.encoder.training is not lock  # LiT: no dropout in the locked tower
    train_toy(model, tokenizer, tmp_path)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    encoder = {k for k in before if k.startswith("text_tower.encoder.")}
    assert encoder and ("text_tower.projection.weight" in changed)
    assert any(k.startswith("image_tower.") for k in changed)
    if lock:
        assert not changed & encoder  # bitwise unchanged
        assert all(not p.requires_grad for p in model.text_tower.encoder.parameters())
    else:
        assert len(changed & encoder) > len(encoder) // 2


def test_resnet_image_tower_embeds_and_learns(tmp_path):
    from clipcore.train.loop import train_clip

    torch.manual_seed(0)
    model, tokenizer = tiny_model(image_tower="resnet18")
    model.eval()
    with torch.no_grad():
        emb = model.encode_image(torch.randn(3, 1, 28, 28))  # (3, 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert model.image_tower.model.conv1.in_channels == 1
    images, captions, labels = toy_task(64)
    config = TrainConfig(epochs=2, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1, device="cpu")
    stream = toy_stream(tmp_path, images, captions, tokenizer, context_length=model.config.context_length)
    result = train_clip(model, stream, len(captions), config, LossConfig(), progress=False)
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    with torch.no_grad():
        image_emb = model.encode_image((images[:20, None].float() / 255 - 0.5) / 0.5)
        text_emb = model.encode_text(tokenize(tokenizer, ["a photo of a bag", "a photo of a coat"]))
    assert ((image_emb @ text_emb.T).argmax(1) == labels[:20]).float().mean() >= 0.9


def save_tiny_hf_clip(directory: Path) -> Path:
    """A tiny transformers CLIPModel and a CLIP-style tokenizer (pads with its end-of-text token), as a Hugging Face
    directory written by save_pretrained."""
    sot, eot = "<|startoftext|>", "<|endoftext|>"
    backend = Tokenizer(models.BPE(unk_token=eot))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CAPTIONS * 20, trainers.BpeTrainer(vocab_size=200, special_tokens=[sot, eot],
                                                                   show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, backend.token_to_id(sot)), (eot, backend.token_to_id(eot))])
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=sot, eos_token=eot, pad_token=eot,
                                           unk_token=eot)
    text = dict(vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=24, bos_token_id=backend.token_to_id(sot),
                eos_token_id=backend.token_to_id(eot), pad_token_id=backend.token_to_id(eot))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, num_channels=3)
    torch.manual_seed(1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(directory)
    hf_tokenizer.save_pretrained(directory)
    return directory


def test_pretrained_clip_directory_matches_transformers(tmp_path):
    directory = save_tiny_hf_clip(tmp_path / "hf_clip")
    model, tokenizer = tiny_model(context_length=12, pretrained=str(directory))
    model.eval()
    assert (model.config.image_size, model.config.channels, model.config.embed_dim) == (32, 3, 24)
    reference = CLIPModel.from_pretrained(directory).eval()
    hf_ids = AutoTokenizer.from_pretrained(directory)(CAPTIONS, padding="max_length", max_length=12, truncation=True,
                                                      return_tensors="pt")["input_ids"]  # (5, 12)
    ids = tokenize(tokenizer, CAPTIONS)
    assert torch.equal(ids, hf_ids)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want_image = torch.nn.functional.normalize(reference.get_image_features(pixel_values=pixels).pooler_output,
                                                   dim=-1)
        want_text = torch.nn.functional.normalize(reference.get_text_features(input_ids=hf_ids).pooler_output, dim=-1)
        torch.testing.assert_close(model.encode_image(pixels), want_image, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode_text(ids), want_text, atol=1e-6, rtol=0)
    assert model.logit_scale.item() == reference.logit_scale.item()


def test_lock_text_on_a_pretrained_clip_freezes_its_text_transformer(tmp_path):
    model, _ = tiny_model(pretrained=str(save_tiny_hf_clip(tmp_path / "hf_clip")), lock_text=True)
    model.train()
    assert not model.clip.text_model.training and model.clip.vision_model.training
    assert not any(p.requires_grad for p in model.clip.text_model.parameters())
    assert model.clip.text_projection.weight.requires_grad and model.clip.visual_projection.weight.requires_grad


@pytest.mark.parametrize("towers", [dict(image_tower="resnet18"), dict(text_tower="minilm", lock_text=True),
                                    "pretrained"], ids=["resnet+clip", "vit+minilm", "pretrained"])
def test_checkpoint_round_trip_for_every_tower(tmp_path, towers):
    torch.manual_seed(0)
    if towers == "pretrained":
        towers = dict(pretrained=str(save_tiny_hf_clip(tmp_path / "hf_clip")))
    model, tokenizer = tiny_model(**towers)
    model.eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    if "pretrained" in towers:
        for file in Path(towers["pretrained"]).iterdir():  # loading must not need the original folder
            file.unlink()
    loaded, loaded_tokenizer = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    size, channels = model.config.image_size, model.config.channels
    pixels = torch.randn(3, channels, size, size)
    ids = tokenize(tokenizer, CAPTIONS)
    assert torch.equal(tokenize(loaded_tokenizer, CAPTIONS), ids)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))
        # the default test set (28x28 grayscale) fits any tower
        assert loaded.encode_image(torch.randn(2, 1, 28, 28)).shape == (2, model.config.embed_dim)
    assert loaded.logit_scale.item() == 3.0


def test_impossible_tower_combinations_fail_clearly():
    with pytest.raises(ValueError, match="text_tower"):
        tiny_model(text_tower="bert")
    with pytest.raises(ValueError, match="image_tower"):
        tiny_model(image_tower="vgg16")
    with pytest.raises(ValueError, match="lock_text"):
        tiny_model(lock_text=True)  # a randomly initialized text tower
    with pytest.raises(ValueError, match="pretrained"):
        tiny_model(pretrained="/nowhere", image_tower="resnet18")


@pytest.mark.parametrize("name", ["vit_b_32.yaml", "minilm_lit.yaml", "vit.yaml"])
def test_example_configs_load(name):
    config = load_params(CONFIGS / name)
    if name == "vit.yaml":
        assert config.model.image_tower == "vit" and config.train.epochs == 3
    elif name == "vit_b_32.yaml":
        m = config.model
        assert m.image_tower == "vit"
        assert (m.image_size, m.channels, m.patch_size, m.vision_width, m.vision_layers, m.vision_heads) == (
            224, 3, 32, 768, 12, 12)
        assert (m.text_width, m.text_layers, m.text_heads, m.context_length, m.vocab_size, m.embed_dim) == (
            512, 12, 8, 77, 49408, 512)
    else:
        assert config.model.text_tower == "minilm" and config.model.lock_text


def test_pretrained_directory_brings_its_own_pixel_statistics(tmp_path):
    """A CLIP directory's preprocessor_config.json sets the normalization: our uint8 -> float equals its
    CLIPImageProcessor's rescale + normalize on the same pixels."""
    directory = save_tiny_hf_clip(tmp_path / "hf_clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.125])
    processor.save_pretrained(directory)
    model, _ = tiny_model(context_length=12, pretrained=str(directory))
    assert (model.config.image_mean, model.config.image_std) == ((0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    want = processor(images=list(images), do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(model.normalize(images), want, atol=1e-6, rtol=0)
