"""The CLIP model: towers, tokenizer, checkpoints, prompt files and the geometry of its embedding space."""
