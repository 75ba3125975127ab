"""The report opened in headless Chromium (Debian `chromium`): no console errors, every section renders, every
embedded image decodes; a screenshot is saved."""

import shutil

import numpy as np
import pytest

from clipcore.report.render import ReportInputs, render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
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
        runs=[{"run id": "abc", "zero-shot top-1": 0.8}],
        confused_pairs=[{"true": "shirt", "predicted": "coat", "count": 2, "images": [image]}],
    )


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
        assert page.evaluate("document.images.length") >= 8 and broken == 0
        assert page.locator("section#retrieval b").count() == 0
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
