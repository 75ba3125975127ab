"""The registered model, written as MLflow "models from code" (no pickled classes).

`predict(df)`:
- `df` with column `image` (PNG/JPEG bytes) -> (n, d) L2-normalized image embeddings;
- `df` with column `text` (str) -> (n, d) L2-normalized text embeddings;
- `df` with column `image` and `params={"labels": [...]}` -> one probability column per label plus `label`.

A frame with both columns or neither, a missing value, text that is not a str, an image that is not bytes, or an
image whose pixel count (as decoded or as resized for the model) exceeds clipcore.evaluate.predict.MAX_PIXELS is
refused with a ValueError naming the row.
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
        from clipcore.model.device import resolve_device

        checkpoint = context.artifacts["checkpoint"]
        self.model, self.tokenizer = load_checkpoint(checkpoint)
        self.model.to(resolve_device("auto"))  # the GPU when there is one (bf16 autocast there), else the CPU
        self.templates = checkpoint_templates(checkpoint)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        from clipcore.evaluate.evaluation import embed_texts
        from clipcore.evaluate.predict import (
            check_images,
            check_labels,
            check_texts,
            embed_image_bytes,
            input_column,
            zero_shot_probabilities,
        )

        column = input_column(model_input.columns)
        labels = check_labels((params or {}).get("labels"))
        if column == "text":
            if labels:
                raise ValueError("params `labels` classify images; this request has a `text` column")
            return embed_texts(self.model, self.tokenizer, check_texts(model_input["text"])).numpy()
        image_emb = embed_image_bytes(self.model, check_images(model_input["image"]))
        if not labels:
            return image_emb.numpy()
        probs = zero_shot_probabilities(self.model, self.tokenizer, image_emb, labels, self.templates).numpy()
        out = pd.DataFrame(probs, columns=labels)
        out["label"] = np.asarray(labels)[probs.argmax(1)]
        return out


mlflow.models.set_model(ClipPyfunc())
