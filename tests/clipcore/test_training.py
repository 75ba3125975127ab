"""The optimizer groups, the schedule and short real training runs, streamed from shards."""

import math

import pytest
import torch

from clipcore.config import LossConfig, ModelConfig, TrainConfig
from clipcore.model.clip_model import build_model
from clipcore.model.tokenizer import tokenize, train_tokenizer
from clipcore.train.loop import build_optimizer, train_clip, warmup_cosine
from tests.clipcore.pairs import toy_stream


def test_warmup_then_cosine():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def tiny_model():
    tok = train_tokenizer(["a photo of a coat", "a photo of a bag"] * 10, vocab_size=300, context_length=8)
    config = ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, vocab_size=300,
                         context_length=8)
    return build_model(config, tok), tok


def test_no_weight_decay_on_gains_biases_and_logit_scale():
    model, _ = tiny_model()
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.2), fused=False)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert id(model.logit_scale) not in decayed
    assert all(p.ndim >= 2 for p in model.parameters() if id(p) in decayed)
    assert any("layer_norm" in names[i] or "bias" in names[i] for i in names if i not in decayed)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("loss", ["clip", "clip_reg", "siglip", "cyclip"])
def test_training_learns_a_two_class_toy_task(loss, tmp_path):
    """Bright images captioned 'coat', dark ones 'bag': every objective must learn to tell them apart."""
    torch.manual_seed(0)
    model, tok = tiny_model()
    labels = torch.arange(256) % 2
    images = (labels[:, None, None] * 200 + torch.randint(0, 50, (256, 28, 28))).to(torch.uint8)
    captions = ["a photo of a coat" if y else "a photo of a bag" for y in labels.tolist()]
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, warmup_steps=4, log_every=1)
    result = train_clip(model, toy_stream(tmp_path, images, captions, tok), 256, cfg, LossConfig(name=loss),
                        progress=False)
    assert result.steps == 48 and len(result.history) == 48
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    with torch.no_grad():
        image_emb = model.encode_image((images[:20, None].float() / 255 - 0.5) / 0.5)
        text_emb = model.encode_text(tokenize(tok, ["a photo of a bag", "a photo of a coat"]))
    assert ((image_emb @ text_emb.T).argmax(1) == labels[:20]).float().mean() == 1.0
    assert 1.0 <= model.scale().item() <= 100.0


def test_undecodable_samples_are_skipped_and_counted(tmp_path):
    """Three corrupt images among 96: training goes on, every batch is full, and the three are counted."""
    model, tok = tiny_model()
    images = torch.randint(0, 255, (96, 28, 28), dtype=torch.uint8)
    stream = toy_stream(tmp_path, images, ["a photo of a coat"] * 96, tok, corrupt=frozenset({3, 40, 77}))
    result = train_clip(model, stream, 93, TrainConfig(epochs=1, batch_size=31, log_every=1), LossConfig(),
                        progress=False)
    assert result.steps == 3 and result.skipped_samples == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_and_resume_is_bitwise_identical(tmp_path, workers):
    """Stop after 7 of 16 steps (state saved every 7), resume in a fresh model and optimizer: the final weights
    equal an uninterrupted run's bit for bit (with 2 DataLoader workers too: the streams' positions are saved, not
    the workers'), and the state loads with weights_only=True; its size does not depend on the data's."""
    labels = torch.arange(128) % 2
    images = (labels[:, None, None] * 200 + torch.randint(0, 50, (128, 28, 28), generator=torch.Generator()
                                                           .manual_seed(3))).to(torch.uint8)
    captions = ["a photo of a coat" if y else "a photo of a bag" for y in labels.tolist()]

    def fresh():
        torch.manual_seed(0)
        return tiny_model()

    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=3, log_every=1, checkpoint_every=7,
                      workers=workers, data_streams=2)
    model, tok = fresh()
    stream = toy_stream(tmp_path, images, captions, tok, streams=2, shard_size=32, shuffle_shards=2,
                        augment_scale=(0.5, 1.0))
    full = train_clip(model, stream, 128, cfg, LossConfig(), progress=False)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_at_step_9(record):
        if record["step"] == 9:  # mid-way between checkpoints: steps 7 and 8 are lost work
            raise Killed

    state = tmp_path / "state.pt"
    model, _ = fresh()
    with pytest.raises(Killed):
        train_clip(model, stream, 128, cfg, LossConfig(), on_log=kill_at_step_9, progress=False,
                   state_path=state, extra_state={"mlflow_run_id": "abc123"})
    saved = torch.load(state, weights_only=True)
    assert saved["next_step"] == 7 and saved["streams"].shape == (1, 2, 2)  # (processes, streams, position)
    model, _ = fresh()
    resumed = train_clip(model, stream, 128, cfg, LossConfig(), progress=False, state_path=state, resume=True)
    assert resumed.steps == 16 - 7 and resumed.extra_state == {"mlflow_run_id": "abc123"}
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_flops_counted_per_sample_and_peak_memory(tmp_path):
    """The counted FLOPs per sample of a train step are about 3x a forward pass's (backward costs ~2 forwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = tiny_model()
    images = torch.randint(0, 255, (64, 28, 28), dtype=torch.uint8)
    tokens = tokenize(tok, ["a photo of a coat"] * 64)
    stream = toy_stream(tmp_path, images, ["a photo of a coat"] * 64, tok)
    result = train_clip(model, stream, 64, TrainConfig(epochs=1, batch_size=32, peak_tflops=1.0), LossConfig(),
                        progress=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model((images[:32, None].float() / 255 - 0.5) / 0.5, tokens[:32])
    forward_per_sample = counter.get_total_flops() / 32
    assert 2.5 < result.flops_per_sample / forward_per_sample < 3.5
    assert result.mfu == pytest.approx(result.achieved_tflops / 1.0) and result.achieved_tflops > 0
    assert result.peak_memory_bytes > 100 * 2**20  # at least the Python + torch process
