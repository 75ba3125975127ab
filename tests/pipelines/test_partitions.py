"""Shard partitions follow the input: registered when it grows, deleted when it shrinks."""

import polars as pl
from dagster import DagsterInstance, build_sensor_context

from clipcore.config import IngestConfig
from pipelines.assets import ingest_shards
from pipelines.partitions import ingest_shard_sensor, register_shards, shard_keys
from pipelines.resources import PipelineResource


def url_list(path, rows):
    pl.DataFrame({"url": [f"http://127.0.0.1/{i}.png" for i in range(rows)],
                  "caption": [f"a photo of item {i}" for i in range(rows)]}).write_csv(path)
    return str(path)


def test_partitions_are_registered_for_a_longer_input_and_deleted_for_a_shorter_one(tmp_path):
    instance = DagsterInstance.ephemeral()
    config = IngestConfig(input=url_list(tmp_path / "list.csv", 1200), shard_size=500)
    assert register_shards(instance, config) == ["00000", "00001", "00002"]
    url_list(tmp_path / "list.csv", 700)  # the input shrank: shard 00002 no longer exists
    assert register_shards(instance, config) == ["00000", "00001"]
    assert instance.get_dynamic_partitions(ingest_shards.name) == ["00000", "00001"]


def test_the_sensor_skips_an_empty_input_with_the_reason(tmp_path):
    (tmp_path / "list.csv").write_text("url,caption\n")
    (tmp_path / "params.yaml").write_text(f"ingest: {{input: {tmp_path / 'list.csv'}}}\n")
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, resources={
            "pipeline": PipelineResource(params_path=str(tmp_path / "params.yaml"))})
        result = ingest_shard_sensor(context)
    assert "ingest.input cannot be read" in result.skip_message and "list.csv" in result.skip_message


def test_a_backfill_runs_as_many_runs():
    """Shard partitions backfill as runs of at most SHARDS_PER_RUN shards, which a run launcher can fan out."""
    from dagster._core.definitions.backfill_policy import BackfillPolicyType

    from pipelines.assets.ingest import SHARDS_PER_RUN, caption_shards

    assert caption_shards.backfill_policy.policy_type == BackfillPolicyType.MULTI_RUN
    assert caption_shards.backfill_policy.max_partitions_per_run == SHARDS_PER_RUN


def test_shard_keys_come_from_the_cached_plan_without_reading_the_input(tmp_path, monkeypatch):
    """Once ingest has planned the input, the sensor's count needs no read of it (not even its header) while the files
    keep their size and mtime; a changed file is counted again."""
    import clipcore.ingest.plan as plan

    config = IngestConfig(input=url_list(tmp_path / "list.csv", 1200), shard_size=500)
    plan.plan_input(config, tmp_path / "plan")

    def no_reading(*args, **kwargs):
        raise AssertionError("the input was read")

    with monkeypatch.context() as patch:
        for name in ("scan_table", "check_table", "read_input"):
            patch.setattr(plan, name, no_reading)
        assert shard_keys(config, tmp_path / "plan") == ["00000", "00001", "00002"]
    url_list(tmp_path / "list.csv", 400)
    assert shard_keys(config, tmp_path / "plan") == ["00000"]


def test_one_partition_run_writes_and_checks_its_own_shard(tmp_path):
    """A run of partition 00001 alone (as a multi-run backfill makes them) writes only that shard and its check
    accounts for that shard's rows only; `_stats.json` waits for the folder to be complete."""
    import io

    import numpy as np
    from dagster import AssetKey, materialize
    from PIL import Image

    from pipelines.assets.ingest import caption_shards, ingest_accounts_for_every_row
    from pipelines.launch import build_resources

    (tmp_path / "data").mkdir()
    for i in range(12):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 20), 10 * i, dtype=np.uint8)).save(buf, format="PNG")
        (tmp_path / "data" / f"{i}.png").write_bytes(buf.getvalue())
    pl.DataFrame({"path": [f"{i}.png" for i in range(12)], "caption": [f"a photo of item {i}" for i in range(12)]}
                 ).write_csv(tmp_path / "data" / "list.csv")
    (tmp_path / "params.yaml").write_text(
        f"ingest: {{input: {tmp_path / 'data' / 'list.csv'}, url_col: path, local_paths: true, shard_size: 5, "
        f"encode_format: png, processes: 1, threads: 2}}\n")
    resources = build_resources(params_path=str(tmp_path / "params.yaml"), outputs_dir=str(tmp_path / "outputs"))
    with DagsterInstance.ephemeral() as instance:
        register_shards(instance, resources["pipeline"].load_config("ingest").ingest)
        result = materialize([caption_shards, ingest_accounts_for_every_row], partition_key="00001",
                             resources=resources, instance=instance)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.asset_key == AssetKey("caption_shards")
    assert check.metadata["input_rows"].value == 5 == check.metadata["manifest_rows"].value
    out = tmp_path / "outputs" / "caption_shards"
    assert sorted(p.name for p in out.iterdir()) == ["00001.parquet", "00001.tar", "asset.json"]  # no _stats.json yet


def test_shards_per_run_zero_makes_a_backfill_one_run():
    """CLIP_INGEST_SHARDS_PER_RUN=0 when the definitions load: one run for a whole backfill (to hand it all to Ray)."""
    import os
    import subprocess
    import sys

    code = ("from pipelines.assets.ingest import caption_shards; "
            "print(caption_shards.backfill_policy.policy_type.value)")
    env = {**os.environ, "CLIP_INGEST_SHARDS_PER_RUN": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "SINGLE_RUN"
