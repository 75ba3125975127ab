"""Run in a fresh process by test_assets: load models:/clip@champion and score the test images through pyfunc."""

import io
import json
import os
import sys

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from clipcore.config import load_params
from clipcore.data.fashion_mnist import read_idx
from clipcore.data.labeled_sets import idx_files
from clipcore.model.prompts import load_class_names

uri = sys.argv[1]
mlflow.set_tracking_uri(uri)
model = mlflow.pyfunc.load_model("models:/clip@champion")
cfg = load_params(os.environ["TINY_PARAMS"])
n = cfg.eval.max_test_images
image_file, label_file = idx_files(cfg.eval.labeled_set)
images = read_idx(image_file)[:n]
labels = read_idx(label_file)[:n]


def png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


frame = pd.DataFrame({"image": [png(a) for a in images]})
names = load_class_names("fashion_mnist")
probs = model.predict(frame, params={"labels": names})
image_emb = model.predict(frame.head(4))
text_emb = model.predict(pd.DataFrame({"text": ["a photo of a coat", "a bag"]}))
print(json.dumps({
    "top1": float((probs["label"].map(names.index).to_numpy() == labels).mean()),
    "embedding_norms_ok": bool(np.allclose(np.linalg.norm(image_emb, axis=1), 1, atol=1e-4)),
    "image_dim": int(image_emb.shape[1]), "text_dim": int(text_emb.shape[1]),
}))
