"""pipelines: Dagster definitions, MLflow wiring and the clip-pipeline CLI around clipcore."""
