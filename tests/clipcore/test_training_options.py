"""Training options that must not change what is learned: data loader workers, gradient accumulation, gradient
checkpointing, channels-last and torch.compile each reproduce the plain run (bitwise or to float tolerance)."""

import pytest
import torch

from clipcore.config import LossConfig, TrainConfig
from clipcore.model.tokenizer import tokenize
from clipcore.train.loop import backward_step, enable_gradient_checkpointing, train_clip
from clipcore.train.losses import LOSSES
from tests.clipcore.pairs import toy_stream
from tests.clipcore.test_training import tiny_model


def toy_data(n=96):
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 50, (n, 28, 28), generator=torch.Generator().manual_seed(5))
    images = (labels[:, None, None] * 200 + noise).to(torch.uint8)
    return images, ["a photo of a coat" if y else "a photo of a bag" for y in labels.tolist()]


def train_with(root, **options):
    torch.manual_seed(0)
    model, tok = tiny_model()
    images, captions = toy_data()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_steps=2, log_every=1, data_streams=2, **options)
    stream = toy_stream(root / ("_".join(map(str, options.items())) or "plain"), images, captions, tok, streams=2,
                        shard_size=32)
    result = train_clip(model, stream, len(captions), cfg, LossConfig(), progress=False)
    return model, result


def gradients(micro_batches=1, loss="clip", checkpointing=False, saved=None):
    """Loss and gradients of one 32-row batch; `saved` collects the bytes autograd keeps for the backward."""
    torch.manual_seed(0)
    model, tok = tiny_model()
    model.train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.logit_bias.requires_grad_(LOSSES[loss].uses_bias)
    images, captions = toy_data(32)
    pixels = (images[:, None].float() / 255 - 0.5) / 0.5

    def keep(tensor):
        if saved is not None:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        value, _, _ = backward_step(model, model, pixels, tokenize(tok, captions), LossConfig(name=loss),
                                    micro_batches)
    return value, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_loader_workers_give_bitwise_the_same_weights(tmp_path):
    """Two data streams read in this process, by one worker or by two: the same batches, the same weights."""
    plain, plain_result = train_with(tmp_path)
    for workers in (1, 2):
        loaded, loaded_result = train_with(tmp_path, workers=workers)
        assert [h["loss"] for h in loaded_result.history] == [h["loss"] for h in plain_result.history]
        for (name, a), b in zip(plain.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert [h["loss"] for h in loaded_result.history] == [h["loss"] for h in plain_result.history]
    for (name, a), b in zip(plain.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_accumulated_micro_batches_give_the_one_batch_gradients(loss):
    """GradCache: 4 micro-batches of 8 rows give the loss and gradients of the 32-row batch (the negatives of every
    row are still all 32), not of four separate 8-row losses."""
    loss_one, one = gradients(1, loss)
    loss_four, four = gradients(4, loss)
    assert torch.allclose(loss_four, loss_one, atol=1e-6)
    assert one.keys() == four.keys() and "clip.logit_scale" in one
    for name in one:
        assert torch.allclose(four[name], one[name], rtol=1e-4, atol=1e-6), name


def test_separate_small_batch_losses_differ_from_the_accumulated_one():
    """Naive accumulation (one loss per micro-batch) would see fewer negatives: its loss is lower than GradCache's."""
    torch.manual_seed(0)
    model, tok = tiny_model()
    images, captions = toy_data(32)
    pixels, ids = (images[:, None].float() / 255 - 0.5) / 0.5, tokenize(tok, captions)
    accumulated, _, _ = backward_step(model, model, pixels, ids, LossConfig(), 4)
    naive = torch.stack([backward_step(model, model, p, i, LossConfig(), 1)[0]
                         for p, i in zip(pixels.chunk(4), ids.chunk(4), strict=True)]).mean()
    assert naive < accumulated - 0.1


def test_gradient_checkpointing_gives_the_same_gradients_keeping_fewer_activations():
    plain_saved, checkpointed_saved = [], []
    _, plain = gradients(saved=plain_saved)
    _, recomputed = gradients(checkpointing=True, saved=checkpointed_saved)
    assert sum(checkpointed_saved) < 0.6 * sum(plain_saved)  # layer inputs only, not every activation
    for name in plain:
        assert torch.allclose(recomputed[name], plain[name], rtol=1e-5, atol=1e-7), name


def test_accumulation_checkpointing_and_channels_last_train_like_the_plain_run(tmp_path):
    plain, plain_result = train_with(tmp_path)
    for options in ({"accum_steps": 4}, {"grad_checkpointing": True}, {"channels_last": True}):
        model, result = train_with(tmp_path, **options)
        losses = [h["loss"] for h in result.history]
        assert losses == pytest.approx([h["loss"] for h in plain_result.history], abs=1e-3), options
        for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-3), (options, name)


def test_compiled_training_matches_eager(tmp_path):
    _, eager = train_with(tmp_path)
    _, compiled = train_with(tmp_path, compile=True)
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], abs=1e-3)
    assert compiled.flops_per_sample == eager.flops_per_sample > 0
