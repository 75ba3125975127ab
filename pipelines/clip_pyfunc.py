"""The registered model, written as MLflow "models from code" (no pickled classes).

`predict(df)`:
- `df` with column `image` (PNG/JPEG bytes) -> (n, d) L2-normalized image embeddings;
- `df` with column `text` (str) -> (n, d) L2-normalized text embeddings;
- `df` with column `image` and `params={"labels": [...]}` -> one probability column per label plus `label`.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class ClipPyfunc(PythonModel):
    """A CLIP checkpoint (safetensors + config + tokenizer + prompt templates) behind the pyfunc contract."""

    def load_context(self, context):
        from clipcore.model.clip_model import checkpoint_templates, load_checkpoint

        checkpoint = context.artifacts["checkpoint"]
        self.model, self.tokenizer = load_checkpoint(checkpoint)
        self.templates = checkpoint_templates(checkpoint)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        from clipcore.evaluate.evaluation import embed_texts
        from clipcore.evaluate.predict import embed_image_bytes, zero_shot_probabilities

        labels = list((params or {}).get("labels") or [])
        if "image" in model_input.columns and model_input["image"].notna().all():
            image_emb = embed_image_bytes(self.model, [bytes(b) for b in model_input["image"]])
            if not labels:
                return image_emb.numpy()
            probs = zero_shot_probabilities(self.model, self.tokenizer, image_emb, labels, self.templates).numpy()
            out = pd.DataFrame(probs, columns=labels)
            out["label"] = np.asarray(labels)[probs.argmax(1)]
            return out
        if "text" in model_input.columns:
            return embed_texts(self.model, self.tokenizer, [str(t) for t in model_input["text"]]).numpy()
        raise ValueError(f"expected a column `image` (bytes) or `text` (str); got {list(model_input.columns)}")


mlflow.models.set_model(ClipPyfunc())
