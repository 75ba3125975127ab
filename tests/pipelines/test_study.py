"""`clip-pipeline study-report` on a synthetic `dvc exp show --json` (DVC 3's layout, no DVC run): only the study's
finished experiments count; queued, running and failed ones are named, never tabled with the workspace's metrics."""

import json

import pytest

from pipelines.cli import main
from pipelines.study import study_runs


def experiment(name, loss, seed, average, weight=0.1, state=None, error=None):
    params = {"loss": {"name": loss, "reg_weight": weight, "reg_form": "one_minus_cos"},
              "train": {"seed": seed, "samples_seen": 2048, "exclude_classes": []}, "registry": {"promote": False}}
    metrics = {"eval_average": average, "zero_shot_top1": average + 0.4, "task/mnist/main_metric": average - 0.2,
               "margin": -0.05, "positive_cosine": 0.4, "modality_gap": 0.8, "temperature": 0.07}
    data = {"rev": "a" * 40, "params": {"params.yaml": {"data": params}},
            "metrics": {"outputs/metrics.json": {"data": metrics}}}
    executor = None if state is None else {"state": state, "name": "dvc-task"}
    return {"revs": [{"rev": "a" * 40, "name": name, "data": data, "error": error, "experiments": None}],
            "executor": executor, "name": name}


def show_json(tmp_path):
    rows = [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
            {"rev": "b" * 40, "name": "main", "data": {}, "error": None, "experiments": [
                experiment("study-clip-s0", "clip", 0, 0.30), experiment("study-clip-s1", "clip", 1, 0.34),
                experiment("study-clip_reg-0.1-s0", "clip_reg", 0, 0.31),
                experiment("study-clip_reg-0.1-s1", "clip_reg", 1, 0.36, state="success"),
                experiment("study-siglip-s0", "siglip", 0, 0.9, state="running"),  # the workspace's numbers
                experiment("study-cyclip-s0", "cyclip", 0, 0.2, state="failed", error={"msg": "stage failed"}),
                experiment("other-clip-s0", "clip", 0, 0.99)]}]
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(rows))
    return path, rows


def test_only_finished_runs_of_the_study(tmp_path):
    _, rows = show_json(tmp_path)
    runs, problems = study_runs(rows, "study")
    assert sorted(r.name for r in runs) == ["study-clip-s0", "study-clip-s1", "study-clip_reg-0.1-s0",
                                            "study-clip_reg-0.1-s1"]
    assert problems == ["study-siglip-s0: running", "study-cyclip-s0: failed (stage failed)"]
    assert {r.samples_seen for r in runs} == {2048}


def test_study_report_command_writes_the_page_and_json(tmp_path, capsys):
    path, _ = show_json(tmp_path)
    main(["study-report", "--experiments", str(path), "--output-dir", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    reg = next(v for v in data["variants"] if v["loss"] == "clip_reg")
    assert reg["minus_clip"]["eval_average"]["differences"] == pytest.approx([0.01, 0.02])
    assert data["problems"] == ["study-siglip-s0: running", "study-cyclip-s0: failed (stage failed)"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Not in the tables: study-cyclip-s0: failed (stage failed); study-siglip-s0: running." in page
    assert "<img" in page
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no finished experiment named nothing-"):
        main(["study-report", "--experiments", str(path), "--name", "nothing", "--output-dir", str(tmp_path)])


def test_single_seed_report_is_strict_json(tmp_path):
    rows = [{"rev": "b" * 40, "name": "main", "data": {}, "error": None, "experiments": [
        experiment("study-clip-s0", "clip", 0, 0.30), experiment("study-clip_reg-0.1-s0", "clip_reg", 0, 0.31)]}]
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(rows))
    main(["study-report", "--experiments", str(path), "--output-dir", str(tmp_path / "out")])

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    data = json.loads((tmp_path / "out" / "study.json").read_text(), parse_constant=refuse)
    clip = next(v for v in data["variants"] if v["loss"] == "clip")
    assert clip["summary"]["eval_average"]["sd"] is None and clip["summary"]["eval_average"]["n"] == 1
    reg = next(v for v in data["variants"] if v["loss"] == "clip_reg")
    assert reg["minus_clip"]["eval_average"]["low"] is None
    assert reg["minus_clip"]["eval_average"]["differences"] == pytest.approx([0.01])
