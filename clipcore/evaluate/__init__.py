"""The evaluate stage: zero-shot classification, retrieval, linear probes, and serving a checkpoint's predictions."""
