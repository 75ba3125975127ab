"""What each asset hands the next: one small frozen dataclass per asset, stored as JSON by the IO manager
(pipelines.io). Heavy products (shards, checkpoints) stay files; these say where they are and what they hold.

A value whose `published` is true is written by its stage into the folder it publishes (pipelines.publish), so the
value and the files it describes are swapped into place together. Values derived from a checkpoint carry its
`checkpoint_sha256` (clipcore.model.clip_model.checkpoint_digest), which later stages check before using them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class CaptionShards:
    """caption_shards: webdataset shards + one parquet manifest per shard."""

    dir: str
    rows: int
    success: int
    failed: int
    shards: int
    input: str  # the ingest input these shards were made from
    overrides: list[str]  # the run's `section.key=value` overrides (its checks apply them too)


@dataclass(frozen=True)
class FilteredCaptions:
    """filtered_captions: kept.parquet, rejected.parquet (one reason per row) and the funnel."""

    published: ClassVar[bool] = True

    dir: str
    kept: str
    rejected: str
    funnel: dict  # rows_in, kept, rejected, rejected_by_reason
    config: dict  # the filter params used, flat


@dataclass(frozen=True)
class TrainedModel:
    """clip_model: a checkpoint, its history and held-out pairs, its MLflow run and registered version."""

    published: ClassVar[bool] = True

    dir: str
    checkpoint: str
    holdout: str
    history: str
    model_name: str
    model_version: str
    loss: str
    config: dict  # the model, loss and train params used, flat
    checkpoint_sha256: str  # also tagged on the MLflow run and the registered version

    # The MLflow run is looked up, not stored: the published value holds only what the run's inputs determine (in a
    # fresh registry, version 1), so DVC's hash of outputs/clip_model, and dvc.lock, are the same run after run.
    @property
    def run_id(self) -> str:
        """The MLflow run that trained it (the registered version's run)."""
        from mlflow import MlflowClient

        return MlflowClient().get_model_version(self.model_name, self.model_version).run_id

    @property
    def model_uri(self) -> str:
        """`models:/<name>/<version>`."""
        return f"models:/{self.model_name}/{self.model_version}"


@dataclass(frozen=True)
class Evaluation:
    """evaluation: metrics.json (and details.json) of one registered version on one test set."""

    published: ClassVar[bool] = True

    dir: str
    metrics_path: str
    details: str
    metrics: dict[str, float]
    model_version: str  # the version these metrics belong to
    checkpoint_sha256: str  # and its checkpoint, checked against the version's tag before anything was logged
    test_set: dict  # the eval params the metrics were measured with
    model_config: dict  # the size and channels the model reads images at
    overrides: list[str]
    holdout: str  # the held-out pairs scored (the gate scores the champion on the same ones)
    shard_root: str  # the ingest folder holding their images


@dataclass(frozen=True)
class Champion:
    """champion: the promotion decision for one candidate version: clipcore.evaluate.promotion.Decision's fields, plus
    where it is recorded and for which registered model."""

    published: ClassVar[bool] = True

    dir: str
    model_name: str
    promoted: bool
    reason: str
    candidate_version: str
    candidate: dict[str, float]
    champion_version: str | None  # the champion before this decision
    champion: dict[str, float] | None  # its metrics re-measured on the candidate's test set


@dataclass(frozen=True)
class Report:
    """report: the self-contained HTML file."""

    published: ClassVar[bool] = True

    dir: str
    html: str


VALUE_TYPES = {cls.__name__: cls for cls in (CaptionShards, FilteredCaptions, TrainedModel, Evaluation, Champion,
                                             Report)}
