"""Stage folders: one writer at a time, published whole by rename, never swapped under a reader."""

import json
import subprocess
import sys
import threading
import time

import pytest

from pipelines.publish import StageBusyError, reading, stage_writer
from pipelines.values import Report

HOLD_LOCK = """
import sys, time
from pipelines.publish import stage_writer
with stage_writer(sys.argv[1], "report"):
    print("holding", flush=True)
    time.sleep(60)
"""


def report_value(folder):
    return Report(dir=str(folder), html=str(folder / "index.html"))


def test_a_second_writer_of_a_stage_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        busy = rf"`report` is being written by another run \(pid {holder.pid} "
        with pytest.raises(StageBusyError, match=busy), stage_writer(tmp_path, "report"):
            pass
        with stage_writer(tmp_path, "evaluation"):  # another stage is not held
            pass
    finally:
        holder.kill()
        holder.wait()
    with stage_writer(tmp_path, "report"):  # a killed holder's lock dies with it
        pass


def test_publish_swaps_the_whole_folder_and_a_failed_run_changes_nothing(tmp_path):
    final = tmp_path / "report"
    with stage_writer(tmp_path, "report") as stage:
        (stage.work / "index.html").write_text("first")
        (stage.work / "extra.txt").write_text("only in the first run")
        stage.publish(report_value(final))
    assert (final / "index.html").read_text() == "first"
    assert json.loads((final / "asset.json").read_text())["value"]["html"] == str(final / "index.html")

    with pytest.raises(RuntimeError, match="dies"), stage_writer(tmp_path, "report") as stage:
        (stage.work / "index.html").write_text("half written")
        raise RuntimeError("dies before publishing")
    assert (final / "index.html").read_text() == "first"

    with stage_writer(tmp_path, "report") as stage:  # a fresh work folder: nothing of the failed run
        assert list(stage.work.iterdir()) == []
        (stage.work / "index.html").write_text("second")
        stage.publish(report_value(final))
    assert sorted(p.name for p in final.iterdir()) == ["asset.json", "index.html"]  # no file of the first run
    assert (final / "index.html").read_text() == "second"


def test_a_reader_holds_off_the_swap_until_it_has_read(tmp_path):
    final = tmp_path / "report"
    with stage_writer(tmp_path, "report") as stage:
        (stage.work / "index.html").write_text("first")
        stage.publish(report_value(final))
    seen, published = [], threading.Event()

    def publish_second():
        with stage_writer(tmp_path, "report") as stage:
            (stage.work / "index.html").write_text("second")
            stage.publish(report_value(final))
        published.set()

    with reading(tmp_path, "report"):
        writer = threading.Thread(target=publish_second)
        writer.start()
        time.sleep(0.5)
        seen.append((final / "index.html").read_text())
        assert not published.is_set()  # waiting for the reader
    writer.join(10)
    assert seen == ["first"] and (final / "index.html").read_text() == "second"
