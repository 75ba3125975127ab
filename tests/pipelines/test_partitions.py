"""Shard partitions follow the input: registered when it grows, deleted when it shrinks."""

import polars as pl
from dagster import DagsterInstance, build_sensor_context

from clipcore.config import IngestConfig
from pipelines.assets import ingest_shards
from pipelines.partitions import ingest_shard_sensor, register_shards
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
