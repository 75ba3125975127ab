"""The report opened in headless Chromium (Debian `chromium`): no console errors, every section renders, every
embedded image decodes; a screenshot is saved."""

import shutil

import numpy as np
import pytest

from clipcore.report.render import ReportInputs, render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
SECTIONS = ["summary", "data-funnel", "training", "zero-shot-classification", "retrieval", "runs-compared",
            "all-metrics", "run-and-model", "configuration"]


def sample_inputs() -> ReportInputs:
    rng = np.random.default_rng(0)
    classes = ["coat", "bag", "shirt"]
    history = [{"step": s, "loss": 4 - s / 50, "lr": 1e-3, "temperature": 0.07, "positive_cosine": 0.3 + s / 500,
                "hardest_negative_cosine": 0.4, "margin": -0.1 + s / 500, "modality_gap": 0.8 - s / 500}
               for s in range(0, 100, 10)]
    image = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    return ReportInputs(
        funnel={"rows_in": 100, "kept": 90, "rejected": 10, "rejected_by_reason": {"duplicate_image": 6, "x": 4}},
        history=history, metrics={"zero_shot_top1": 0.8, "zero_shot_top5": 0.99, "linear_probe_top1": 0.85},
        class_names=classes, per_class_accuracy=[0.9, 0.8, 0.7], confusion=[[9, 1, 0], [1, 8, 1], [2, 1, 7]],
        retrieval_examples=[{"caption": "a coat <b>not bold</b>", "images": [(image, True), (image, False)]}],
        identifiers={"MLflow run": "abc"}, decision="v1 promoted", config={"loss.name": "clip"},
        runs=[{"run id": "abc", "dataset": "fashion_mnist", "zero-shot top-1": 0.8},
              {"run id": "def", "dataset": "digits", "zero-shot top-1": 0.9}],
        confused_pairs=[{"true": "shirt", "predicted": "coat", "count": 2, "images": [image]}],
        facts={"test set": "fashion_mnist: 30 images, 3 classes (data/t10k.gz)", "prompts": "2 templates",
               "trained": "2026-01-02 03:04 UTC", "training time": "61.0 s (1.0 min)", "device": "cpu",
               "hardware": "CPU AMD EPYC, 2 cores", "report written": "2026-01-02 04:00 UTC"},
        templates=["a photo of a {}.", "a <i>bad</i> photo of the {}."],
        rejected_examples=[{"reason": "duplicate_image", "rows": [("u1", image), ("u2", rng.integers(
            0, 255, (40, 20, 3), dtype=np.uint8))]}, {"reason": "file_not_found", "rows": [("u3", None)]}],
    )


def test_report_states_test_set_prompts_training_hardware_date_per_class_and_rejected_samples():
    page = render_report(sample_inputs())
    for text in ("fashion_mnist: 30 images, 3 classes", "61.0 s (1.0 min)", "CPU AMD EPYC, 2 cores",
                 "2026-01-02 03:04 UTC", "report written", "a photo of a {}.", "a &lt;i&gt;bad&lt;/i&gt; photo"):
        assert text in page, text
    per_class = page[page.index('<section id="zero-shot-classification">'):page.index('<section id="retrieval">')]
    assert "<th>class</th><th>images</th><th>accuracy</th><th>precision</th>" in per_class
    assert "<td>coat</td><td>10</td><td>0.9000</td><td>0.7500</td>" in per_class  # 9 of 12 predicted coats
    funnel = page[page.index('<section id="data-funnel">'):page.index('<section id="training">')]
    assert funnel.count('alt="rejected: duplicate_image"') == 2 and 'title="u3">no image</span>' in funnel
    runs = page[page.index('<section id="runs-compared">'):page.index('<section id="all-metrics">')]
    assert "<th>dataset</th>" in runs and "<td>digits</td>" in runs


@NEEDS_CHROMIUM
def test_report_renders_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    path = tmp_path / "index.html"
    path.write_text(render_report(sample_inputs()))
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        for section in SECTIONS:
            box = page.locator(f"section#{section}").bounding_box()
            assert box is not None and box["height"] > 20, section
            assert page.locator(f"section#{section} h2").is_visible(), section
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert page.evaluate("document.images.length") >= 10 and broken == 0
        assert page.locator("section#retrieval b").count() == 0
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_rejected_examples_reads_a_few_per_reason_from_the_shards(tmp_path):
    import io
    import tarfile

    import polars as pl
    from PIL import Image

    from clipcore.report.stage import rejected_examples

    png = io.BytesIO()
    Image.fromarray(np.full((30, 60), 200, dtype=np.uint8)).save(png, format="PNG")
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in [("u1.png", png.getvalue()), ("u1.txt", b"a coat"), ("u2.png", b"not an image"),
                           ("u2.txt", b"a bag"), ("u4.png", png.getvalue()), ("u4.txt", b"a shirt")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pl.DataFrame({"uid": ["u1", "u2", "u3", "u4"], "shard": ["00000.tar", "00000.tar", None, "00000.tar"],
                  "filter_reason": ["duplicate_image", "corrupt_image", "file_not_found", "duplicate_image"]}
                 ).write_parquet(tmp_path / "rejected.parquet")
    groups = {g["reason"]: g["rows"] for g in rejected_examples(tmp_path / "rejected.parquet", tmp_path, 1)}
    assert set(groups) == {"duplicate_image", "corrupt_image", "file_not_found"}
    (uid, image), = groups["duplicate_image"]  # one per reason: the first by uid
    assert uid == "u1" and image.shape == (30, 60)  # at most 64 a side (not upscaled; the page scales it)
    assert groups["corrupt_image"] == [("u2", None)] and groups["file_not_found"] == [("u3", None)]
