"""clipcore: the library (data, models, losses, training, evaluation). No Dagster, MLflow or DVC here."""
