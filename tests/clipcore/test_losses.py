"""Each loss against a naive per-pair loop written straight from its paper's formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipcore.config import LossConfig
from clipcore.train.losses import (
    REG_FORMS,
    clip_loss,
    clip_reg_loss,
    contrastive_loss,
    cyclip_loss,
    positive_pair_regularizer,
    siglip_loss,
)

F64 = torch.float64


def batch(seed: int = 0, n: int = 5, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=-1)
    return image, text


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def naive_clip(image, text, scale):
    n = len(image)
    total = 0.0
    for i in range(n):
        row = [scale * dot(image[i], text[j]) for j in range(n)]
        col = [scale * dot(image[j], text[i]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def test_clip_loss_matches_naive_loop():
    image, text = batch()
    got = clip_loss(image, text, torch.tensor(14.3, dtype=F64)).item()
    assert got == pytest.approx(naive_clip(image, text, 14.3), rel=1e-9)


def test_clip_loss_is_small_for_perfectly_aligned_pairs():
    eye = torch.eye(5, dtype=F64)
    assert clip_loss(eye, eye, torch.tensor(100.0, dtype=F64)).item() < 1e-6  # = log(1 + 4 e^-100)
    assert clip_loss(eye, eye.flip(0), torch.tensor(100.0, dtype=F64)).item() > 50  # every positive is the worst pair


def test_clip_reg_adds_weighted_positive_pair_term():
    image, text = batch(1)
    reg = sum(1 - dot(image[i], text[i]) for i in range(5)) / 5
    expected = naive_clip(image, text, 10.0) + 0.3 * reg
    assert clip_reg_loss(image, text, torch.tensor(10.0, dtype=F64), 0.3).item() == pytest.approx(expected, rel=1e-9)


def test_siglip_matches_naive_loop():
    image, text = batch(2)
    t, b = 10.0, -10.0
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            total += -math.log(1 / (1 + math.exp(-z * (t * dot(image[i], text[j]) + b))))
    got = siglip_loss(image, text, torch.tensor(t, dtype=F64), torch.tensor(b, dtype=F64)).item()
    assert got == pytest.approx(total / 5, rel=1e-9)


def test_cyclip_matches_naive_loop():
    image, text = batch(3)
    n = 5
    in_modal = sum((dot(image[j], image[k]) - dot(text[j], text[k])) ** 2 for j in range(n) for k in range(n)) / n
    cross = sum((dot(image[j], text[k]) - dot(image[k], text[j])) ** 2 for j in range(n) for k in range(n)) / n
    expected = naive_clip(image, text, 5.0) + 0.25 * in_modal + 0.5 * cross
    assert cyclip_loss(image, text, torch.tensor(5.0, dtype=F64), 0.25, 0.5).item() == pytest.approx(expected, rel=1e-9)


def test_regularizer_forms_on_a_hand_computed_pair():
    """u = (1, 0), v = (0.6, 0.8): cos = 0.6; raw projections a = 2u, b = 0.5v = (0.3, 0.4)."""
    u, v = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[0.6, 0.8]], dtype=F64)
    a, b = 2 * u, 0.5 * v
    assert positive_pair_regularizer(u, v, "one_minus_cos").item() == pytest.approx(0.4)
    assert positive_pair_regularizer(u, v, "sq_euclid_normalized").item() == pytest.approx(0.8)  # 0.4^2 + 0.8^2
    assert positive_pair_regularizer(u, v, "sq_euclid_raw", a, b).item() == pytest.approx(3.05)  # 1.7^2 + 0.4^2


@pytest.mark.parametrize("form", REG_FORMS)
def test_clip_reg_forms_match_naive_loop(form):
    g = torch.Generator().manual_seed(4)
    image_raw = 3 * torch.randn(5, 4, generator=g, dtype=F64)  # projections of norm ~6, far from 1
    text_raw = torch.randn(5, 4, generator=g, dtype=F64)
    image, text = F.normalize(image_raw, dim=-1), F.normalize(text_raw, dim=-1)
    if form == "one_minus_cos":
        reg = sum(1 - dot(image[i], text[i]) for i in range(5)) / 5
    elif form == "sq_euclid_normalized":
        reg = sum(sum((float(x) - float(y)) ** 2 for x, y in zip(image[i], text[i], strict=True)) for i in range(5)) / 5
        assert reg == pytest.approx(2 * sum(1 - dot(image[i], text[i]) for i in range(5)) / 5)  # = 2 (1 - cos)
    else:
        reg = sum(sum((float(x) - float(y)) ** 2 for x, y in zip(image_raw[i], text_raw[i], strict=True))
                  for i in range(5)) / 5
    expected = naive_clip(image, text, 10.0) + 0.2 * reg
    config = LossConfig(name="clip_reg", reg_weight=0.2, reg_form=form)
    scale, bias = torch.tensor(10.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    got = contrastive_loss(config, image, text, scale, bias, image_raw=image_raw, text_raw=text_raw)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_raw_form_refuses_missing_projections():
    image, text = batch(5)
    with pytest.raises(ValueError, match="sq_euclid_raw"):
        contrastive_loss(LossConfig(name="clip_reg", reg_form="sq_euclid_raw"), image, text,
                         torch.tensor(10.0, dtype=F64), torch.tensor(0.0, dtype=F64))


def test_model_projections_normalize_to_its_embeddings():
    """Training reads the towers' projections before normalization (forward(normalize=False)); evaluation the
    unit-norm embeddings: the same vectors, scaled."""
    from tests.clipcore.test_training import tiny_model

    torch.manual_seed(0)
    model, tok = tiny_model()
    pixels, ids = torch.randn(3, 1, 28, 28), torch.randint(4, 20, (3, 8))
    image_proj, text_proj = model(pixels, ids, normalize=False)
    image_emb, text_emb = model(pixels, ids)
    assert not torch.allclose(image_proj.norm(dim=-1), torch.ones(3))
    assert torch.allclose(F.normalize(image_proj, dim=-1), image_emb) and torch.allclose(F.normalize(text_proj, dim=-1),
                                                                                           text_emb)
