"""The CLIP-score filter reads the kept rows shard by shard, each tar once, and scores them one batch at a time: the
scores equal the whole-set reference (every image's bytes in a dict, consecutive kept rows per batch), and the
stage's cut equals numpy.quantile of every kept score."""

import io
import tarfile

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

import clipcore.filter.clip_score as clip_score
from clipcore.config import ClipScoreConfig, FilterConfig, IngestConfig
from clipcore.filter.clip_score import hf_clip_embedders, score_kept
from clipcore.filter.stage import run_filter
from clipcore.ingest.stage import ShardWriter, ingest

WORDS = ["red", "warm", "coat", "small", "leather", "bag", "summer", "dress", "white", "sandal", "running", "shoe"]


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def caption(i: int) -> str:
    return f"a photo of a {WORDS[i % 12]} {WORDS[(i * 5 + 1) % 12]} {WORDS[(i * 7 + 2) % 12]}"


@pytest.fixture
def shards(tmp_path):
    """3 shards of 10 samples; 21 of the 30 are kept (the others, e.g. rejected rows, stay in the tars)."""
    rows = []
    for s in range(3):
        with ShardWriter(tmp_path / f"{s:05d}.tar") as writer:
            for i in range(s * 10, s * 10 + 10):
                uid = f"{i:09d}"
                writer.write(uid, {"png": png(i), "txt": caption(i).encode(), "json": b"{}"})
                if i % 10 not in (2, 5, 9):
                    rows.append({"uid": uid, "caption": caption(i), "shard": f"{s:05d}.tar"})
    return tmp_path, pl.DataFrame(rows)


def image_features(payloads: list[bytes]) -> np.ndarray:
    """A deterministic per-image embedding (mean, spread, corner pixel, 1) of the decoded pixels."""
    out = []
    for payload in payloads:
        pixels = np.asarray(Image.open(io.BytesIO(payload)), dtype=np.float32)
        out.append([pixels.mean(), pixels.std(), pixels[0, 0, 0] + 1, 1.0])
    return np.asarray(out)


def text_features(texts: list[str]) -> np.ndarray:
    return np.asarray([[len(t), t.count("a") + 1, sum(map(ord, t)) % 97 + 1, 2.0] for t in texts])


def reference_scores(root, kept: pl.DataFrame, batch_size: int) -> np.ndarray:
    """The former code: every kept image's bytes in one dict, then consecutive kept rows per batch."""
    payloads = {}
    for shard in sorted(root.glob("*.tar")):
        with tarfile.open(shard) as tar:
            payloads |= {m.name[:-4]: tar.extractfile(m).read() for m in tar if m.name.endswith(".png")}
    images, captions = [payloads[u] for u in kept["uid"]], kept["caption"].to_list()
    scores = []
    for i in range(0, len(images), batch_size):
        image_emb = image_features(images[i : i + batch_size]).astype(np.float32)
        text_emb = text_features(captions[i : i + batch_size]).astype(np.float32)
        image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
        text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
        scores.append((image_emb * text_emb).sum(1))
    return np.concatenate(scores)


def count_reads(monkeypatch):
    """([shard paths opened], [images per embedding batch], an image embedder that records its batches), with the
    shard reader patched to record what it opens."""
    opened, batches = [], []
    original = clip_score.iter_samples

    def counting(paths, uids):
        opened.extend(str(p) for p in paths)
        return original(paths, uids)

    def embed_images(payloads):
        batches.append(len(payloads))
        return image_features(payloads)

    monkeypatch.setattr(clip_score, "iter_samples", counting)
    return opened, batches, embed_images


def test_scores_equal_the_whole_set_reference_reading_each_shard_once(shards, monkeypatch):
    root, kept = shards
    opened, batches, embed_images = count_reads(monkeypatch)
    scores = score_kept(root, kept, embed_images, text_features, batch_size=4, progress=False)
    assert np.array_equal(scores, reference_scores(root, kept, 4))
    assert sorted(opened) == [str(root / f"{s:05d}.tar") for s in range(3)]  # each tar read once
    assert batches == [4, 4, 4, 4, 4, 1]  # batches run across shard ends, as consecutive kept rows


def test_scores_stay_aligned_with_rows_in_any_order(shards):
    root, kept = shards
    shuffled = kept.sample(fraction=1.0, shuffle=True, seed=3)
    by_uid = dict(zip(kept["uid"], score_kept(root, kept, image_features, text_features, 5, False), strict=True))
    scores = score_kept(root, shuffled, image_features, text_features, 5, False)
    np.testing.assert_allclose(scores, [by_uid[u] for u in shuffled["uid"]], rtol=1e-6)


def test_a_kept_row_missing_from_its_shard_is_an_error(shards):
    root, kept = shards
    ghost = pl.DataFrame([{"uid": "000000099", "caption": "a ghost row here", "shard": "00001.tar"}])
    with pytest.raises(ValueError, match="1 requested samples are not in the shards"):
        score_kept(root, pl.concat([kept, ghost]), image_features, text_features, 4, False)


@pytest.fixture
def hf_clip_dir(tmp_path):
    from transformers import CLIPImageProcessor

    from tests.clipcore.test_towers import save_tiny_hf_clip

    directory = save_tiny_hf_clip(tmp_path / "hf_clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_filter_stage_scores_with_a_local_hf_clip(tmp_path, hf_clip_dir):
    """run_filter end to end on an ingest folder, against transformers' own CLIP on the whole kept set at once."""
    from transformers import CLIPModel, CLIPProcessor

    for i in range(14):
        (tmp_path / f"{i}.png").write_bytes(png(100 + i))
    table = pl.DataFrame({"path": [f"{i}.png" for i in range(14)], "caption": [caption(i) for i in range(14)]})
    table.write_csv(tmp_path / "captions.csv")
    ingest(IngestConfig(input=str(tmp_path / "captions.csv"), url_col="path", local_paths=True, encode_format="png",
                        processes=1, threads=1, shard_size=4), tmp_path / "ingest", progress=False)
    config = FilterConfig(languages=(),
                          clip_score=ClipScoreConfig(enabled=True, model=str(hf_clip_dir), top_fraction=0.5,
                                                     batch_size=3, device="cpu"))
    result = run_filter(tmp_path / "ingest", config, tmp_path / "out", progress=False)
    scored = result.kept.vstack(result.rejected.filter(pl.col("filter_reason") == "clip_score_low").select(
        result.kept.columns)).sort("uid")
    assert scored.height == 14 and result.kept.height == 7 and result.counts["clip_score_model"] == str(hf_clip_dir)

    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(hf_clip_dir)
    with torch.no_grad():
        pil = [Image.open(tmp_path / f"{int(u)}.png").convert("RGB") for u in scored["uid"]]
        image = model.get_image_features(**processor(images=pil, return_tensors="pt"))
        text = processor(text=scored["caption"].to_list(), return_tensors="pt", padding=True, truncation=True)
        text = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    features = [x if torch.is_tensor(x) else x.pooler_output for x in (image, text)]
    want = (torch.nn.functional.normalize(features[0], dim=-1) * torch.nn.functional.normalize(features[1], dim=-1))
    np.testing.assert_allclose(scored["clip_score"].to_numpy(), want.sum(1).numpy(), atol=1e-5)


def test_filter_stage_scores_shard_by_shard_and_cuts_at_the_exact_quantile(tmp_path, monkeypatch):
    """run_filter with a registered-model loader: each shard's tar is read once, no batch spans two shards or holds
    more than batch_size pairs, the cut equals numpy.quantile of every kept score, and the rows below it are
    rejected `clip_score_low` with their score."""
    for i in range(14):
        (tmp_path / f"{i}.png").write_bytes(png(200 + i))
    pl.DataFrame({"path": [f"{i}.png" for i in range(14)], "caption": [caption(i) for i in range(14)]}).write_csv(
        tmp_path / "captions.csv")
    ingest(IngestConfig(input=str(tmp_path / "captions.csv"), url_col="path", local_paths=True, encode_format="png",
                        processes=1, threads=1, shard_size=5), tmp_path / "ingest", progress=False)
    opened, batches, embed_images = count_reads(monkeypatch)
    config = FilterConfig(languages=(), clip_score=ClipScoreConfig(enabled=True, model="models:/fake@champion",
                                                                     top_fraction=0.3, batch_size=2))
    result = run_filter(tmp_path / "ingest", config, tmp_path / "out", lambda uri: (embed_images, text_features),
                        progress=False)
    assert sorted(opened) == [str(tmp_path / "ingest" / f"{s:05d}.tar") for s in range(3)]
    assert batches == [2, 2, 1, 2, 2, 1, 2, 2]  # shards of 5, 5 and 4 pairs
    kept, rejected = result.kept, result.rejected
    scores = pl.concat([kept.select("clip_score"), rejected.select("clip_score")])["clip_score"].to_numpy()
    cut = result.counts["clip_score_cut"]
    assert cut == float(np.quantile(scores, 0.7))
    assert kept.height == (scores >= cut).sum() == 4 and (kept["clip_score"] >= cut).all()
    assert rejected["filter_reason"].to_list() == ["clip_score_low"] * 10 and (rejected["clip_score"] < cut).all()


def test_hf_clip_embedders_refuse_cuda_without_a_device(hf_clip_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="filter.clip_score.device=cuda but no CUDA device"):
        hf_clip_embedders(hf_clip_dir, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hf_clip_embedders_on_cuda_agree_with_the_cpu(shards, hf_clip_dir):
    root, kept = shards
    cpu = score_kept(root, kept, *hf_clip_embedders(hf_clip_dir, "cpu"), 8, False)
    gpu = score_kept(root, kept, *hf_clip_embedders(hf_clip_dir, "cuda"), 8, False)  # bf16 autocast
    np.testing.assert_allclose(gpu, cpu, atol=0.05)
