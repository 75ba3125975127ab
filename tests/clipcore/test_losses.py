"""Each loss against a naive per-pair loop written straight from its paper's formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipcore.train.losses import clip_loss, clip_reg_loss, cyclip_loss, siglip_loss

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
