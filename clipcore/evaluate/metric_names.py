"""The metric names other code relies on, listed once: metrics.json's contract keys, the ones tagged on a registered
model version, the ones the promotion gate compares and the ones the report summarizes."""

ZERO_SHOT = ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall")
RETRIEVAL = tuple(f"retrieval_{d}_r{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
LINEAR_PROBE = "linear_probe_top1"
CONTRACT = (*ZERO_SHOT, *RETRIEVAL)  # always in outputs/metrics.json; LINEAR_PROBE too when a probe is fitted
VERSION_TAGS = (*ZERO_SHOT[:2], RETRIEVAL[0], RETRIEVAL[3], LINEAR_PROBE)  # top-1/5, R@1 both ways, probe
GATE = ZERO_SHOT  # what the promotion gate re-measures on the champion (zero_shot_on_test_set); the first decides
SUMMARY = (*ZERO_SHOT, LINEAR_PROBE)  # the report's summary table
