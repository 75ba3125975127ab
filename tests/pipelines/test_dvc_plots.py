"""`dvc plots show` / `dvc plots diff` offline: .dvc/config names a page template with vega, vega-lite and vega-embed
inlined (pipelines.dvc_plots), and the training history DVC plots is a git-tracked file, so in a fresh clone (no DVC
cache) `dvc plots diff main <experiment>` draws both runs' curves in headless Chromium with every network request
refused."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.dvc_plots import PACKAGES, TEMPLATE
from pipelines.dvc_yaml import HISTORY, PLOTS
from pipelines.stages import BY_NAME

ROOT = Path(__file__).resolve().parents[2]
DVC = ("uv", "tool", "run", "--quiet", "--from", "dvc==3.67.1", "dvc")  # DVC conflicts with Dagster: not in the venv
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)


def test_dvc_config_names_the_offline_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    path = (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()
    assert path == TEMPLATE and path.is_file()
    text = path.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text  # DVC puts its CDN tags where {scripts} is
    assert not REMOTE_SCRIPT.search(text), "the template loads a script from elsewhere"
    for name, (version, _, _) in PACKAGES.items():
        assert f"<script>/* {name} {version} (npm) */" in text


def test_the_training_history_is_a_git_tracked_plots_file():
    assert HISTORY == "outputs/history.json" and BY_NAME["pretrain"].plots == HISTORY
    ignored = subprocess.run(["git", "check-ignore", "-q", HISTORY], cwd=ROOT).returncode == 0
    assert not ignored, f"{HISTORY} must be committed like outputs/metrics.json (.gitignore)"
    assert all(HISTORY in next(iter(p.values()))["y"] for p in PLOTS)


WRITE_HISTORY = f"""\
import json, math, os, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
history = [{{"step": s, "loss": 4.2 * math.exp(-lr * s / 300) + 0.3, "temperature": 0.07 - lr * s / 20000}}
           for s in range(0, 700, 10)]
os.makedirs("outputs/clip_model", exist_ok=True)
for path in ("outputs/clip_model/history.json", "{HISTORY}"):  # as the pretrain asset writes it
    json.dump(history, open(path, "w"))
"""


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(cwd.parent / "dvc-site-cache"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def baseline_repo(repo: Path) -> None:
    """A git + DVC repository shaped like the project's: its .dvc/config and template, its plots definitions, a
    pretrain stage writing the history into outputs/clip_model and the git-tracked copy; one run committed."""
    repo.mkdir()
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, *DVC, "init", "-q")
    shutil.copyfile(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / TEMPLATE.relative_to(ROOT)).parent.mkdir(parents=True)
    shutil.copyfile(TEMPLATE, repo / TEMPLATE.relative_to(ROOT))
    (repo / "params.yaml").write_text("train:\n  lr: 1.0\n")
    (repo / "pretrain.py").write_text(WRITE_HISTORY)
    stage = {"cmd": f"{sys.executable} pretrain.py", "deps": ["pretrain.py"], "params": ["train"],
             "outs": ["outputs/clip_model", {HISTORY: {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pretrain": stage}, "plots": PLOTS}, sort_keys=False))
    (repo / ".gitignore").write_text("/outputs/*\n!/outputs/history.json\n/dvc_plots/\n")
    run(repo, *DVC, "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """`dvc plots diff main lr2` in a fresh clone, lr2 an experiment run there: the page it wrote."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: DVC runs as `uv tool run --from dvc==3.67.1 dvc`")
    tmp = tmp_path_factory.mktemp("plots")
    baseline_repo(tmp / "origin")
    run(tmp, "git", "clone", "-q", str(tmp / "origin"), "clone")  # no DVC cache: main's outputs are not here
    clone = tmp / "clone"
    run(clone, *DVC, "exp", "run", "-q", "-n", "lr2", "-S", "train.lr=2.0")
    result = run(clone, *DVC, "plots", "diff", "main", "lr2", "-o", str(tmp / "page"))
    assert "failed to load" not in result.stderr + result.stdout
    return tmp / "page" / "index.html"


def test_plots_diff_of_an_experiment_and_main_names_no_remote_script(rendered):
    html = rendered.read_text()
    assert not REMOTE_SCRIPT.search(html), "the page loads a script from elsewhere"
    assert "cdn.jsdelivr.net" not in html
    assert re.findall(r'<div id = "(\w+)"', html) == ["training_loss", "temperature"]
    assert '"rev": "main"' in html and '"rev": "lr2"' in html  # both runs' points are in the page


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_plots_page_draws_both_runs_offline_in_chromium(rendered):
    from playwright.sync_api import sync_playwright

    errors, refused = [], []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.route("**/*", only_files)
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(rendered.as_uri())
        page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 2",
                               timeout=20_000)
        assert page.locator("body > div").count() == len(PLOTS)  # the two plots of dvc.yaml, nothing else
        for plot in ("training_loss", "temperature"):
            box = page.locator(f"#{plot}").bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 150, plot
        assert page.evaluate("vegaEmbed.version") == PACKAGES["vega-embed"][0]  # the inlined one
        page.screenshot(path=str(rendered.with_name("plots.png")), full_page=True)
        browser.close()
    assert errors == [] and refused == []
    assert rendered.with_name("plots.png").stat().st_size > 10_000
