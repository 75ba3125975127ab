"""A BPE tokenizer trained on the caption corpus with Hugging Face `tokenizers` (pretrained text towers bring their
own, see clipcore/model/towers.py).

Every caption becomes `<sot> tokens... <eot> <pad>...` of exactly `context_length` ids; the text tower
pools the hidden state at `<eot>` (CLIP's choice), which a causal mask keeps blind to the padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<sot>", "<eot>"
SPECIALS = [PAD, UNK, SOT, EOT]  # ids 0..3; EOT must not be 2 (transformers' legacy argmax pooling)


def pad_and_truncate(tokenizer: Tokenizer, context_length: int, pad_token: str) -> Tokenizer:
    """Make `tokenizer` emit exactly `context_length` ids, padding with `pad_token`."""
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    return tokenizer


def _configure(tokenizer: Tokenizer, context_length: int) -> Tokenizer:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, tokenizer.token_to_id(SOT)), (EOT, tokenizer.token_to_id(EOT))]
    )
    return pad_and_truncate(tokenizer, context_length, PAD)


def train_tokenizer(captions: Iterable[str], vocab_size: int, context_length: int) -> Tokenizer:
    """Train a lower-cased byte-level BPE tokenizer on `captions` (any iterable of strings)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    return _configure(tokenizer, context_length)


def load_tokenizer(path: str | Path, context_length: int) -> Tokenizer:
    """Load a tokenizer saved with `tokenizer.save(path)`, padding and truncating to `context_length`.

    Ours (it has `<sot>`/`<eot>`) gets the layout above; a pretrained model's own tokenizer (see
    clipcore.towers.load_pretrained_tokenizer) keeps its special-token template and the pad token it was saved with.
    """
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.token_to_id(SOT) is not None and tokenizer.token_to_id(EOT) is not None:
        return _configure(tokenizer, context_length)
    pad = tokenizer.padding
    if pad is None:
        raise ValueError(f"{path}: a pretrained tokenizer must be saved with padding enabled (its pad token)")
    return pad_and_truncate(tokenizer, context_length, pad["pad_token"])


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Encode `texts` to a (N, context_length) int64 tensor of token ids."""
    encodings = tokenizer.encode_batch([t if isinstance(t, str) else "" for t in texts])
    return torch.tensor([e.ids for e in encodings], dtype=torch.long)


def unknown_pieces(tokenizer: Tokenizer, text: str) -> tuple[list[str], int]:
    """The pieces of `text` the model has no learned token for, and how many pieces it has.

    Our caption BPE is byte-level, so it never emits `<unk>`: any text becomes tokens. What it cannot represent is a
    word the captions never made into a token; such a word is spelled from fragments whose meaning the text tower
    never learned for it. So for ours a piece is a pre-tokenized word (as its normalizer and pre-tokenizer split
    it) and it is unknown when it is not one token of the vocabulary. A pretrained tokenizer's sub-words were
    learned with its model, so there a piece is a token and it is unknown when it is the model's unknown token."""
    if tokenizer.token_to_id(SOT) is not None and tokenizer.token_to_id(EOT) is not None:
        normalized = tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text
        words = [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
        unknown = [tokenizer.decoder.decode([word]) if tokenizer.decoder else word  # byte-level back to text
                   for word in words if tokenizer.token_to_id(word) is None]
        return unknown, len(words)
    unk = getattr(tokenizer.model, "unk_token", None)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    pieces = [token for token, mask in zip(encoding.tokens, encoding.attention_mask, strict=True) if mask]
    return [token for token in pieces if unk is not None and token == unk], len(pieces)
