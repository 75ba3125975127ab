"""A backfill of shard partitions handed to Ray through Dagster Pipes: one Dagster run of the whole range launches
pipelines.pipes_ingest, whose Ray tasks run on both nodes of a real two-node cluster on this machine; the run's event
log gets the external process's log lines and its stats, and the manifest equals the local distributor's."""

from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from clipcore.config import IngestConfig
from clipcore.data.layout import read_manifest
from clipcore.ingest.stage import ingest
from pipelines.assets.ingest import caption_shards, ingest_accounts_for_every_row
from pipelines.launch import build_resources
from pipelines.partitions import register_shards
from tests.clipcore.http_fixture import ImageServer
from tests.clipcore.ray_cluster import two_node_cluster
from tests.clipcore.test_ingest_ray import url_list


def test_a_whole_backfill_runs_on_ray_through_pipes(tmp_path):
    with ImageServer() as base:
        urls = url_list(tmp_path / "urls.parquet", base)
        settings = {"input": urls, "shard_size": 4, "max_caption_chars": 200, "timeout": 2.0, "retries": 0,
                    "threads": 4, "processes": 2}
        ingest(IngestConfig(**settings), tmp_path / "local", progress=False)
        with two_node_cluster() as address:
            fields = ", ".join(f"{k}: {v}" for k, v in settings.items())
            (tmp_path / "params.yaml").write_text(
                f"ingest: {{{fields}, distributor: ray, ray_address: '{address}'}}\n")
            resources = build_resources(params_path=str(tmp_path / "params.yaml"),
                                        outputs_dir=str(tmp_path / "outputs"))
            with DagsterInstance.ephemeral() as instance:
                keys = register_shards(instance, resources["pipeline"].load_config("ingest").ingest)
                result = materialize([caption_shards, ingest_accounts_for_every_row], resources=resources,
                                     instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                                              ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
                logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert result.success and keys == [f"{i:05d}" for i in range(6)]
    materializations = result.asset_materializations_for_node("caption_shards")  # one per partition, of one run
    assert sorted(m.partition for m in materializations) == keys
    metadata = {k: v.value for k, v in materializations[0].metadata.items()}
    assert metadata["launched"] == "dagster pipes" and metadata["distributor"] == "ray"
    assert metadata["shards_written"] == 6 and metadata["nodes"] == 2  # one run, every shard, tasks on both nodes
    assert any("ingest shards 0..5 on ray" in m for m in logs)  # the external process's log line, in the run's log
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.asset_key == AssetKey("caption_shards")
    columns = ("uid", "url", "status", "error")
    ours = read_manifest(tmp_path / "outputs" / "caption_shards").select(columns)
    assert ours.height == 24 and ours.equals(read_manifest(tmp_path / "local").select(columns))
