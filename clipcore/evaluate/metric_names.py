"""The metric names other code relies on, listed once: metrics.json's contract keys, the ones tagged on a registered
model version, the ones the promotion gate compares and the ones the report summarizes."""

ZERO_SHOT = ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall")
RETRIEVAL = tuple(f"retrieval_{d}_r{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
LINEAR_PROBE = "linear_probe_top1"
CONTRACT = (*ZERO_SHOT, *RETRIEVAL)  # always in outputs/metrics.json; LINEAR_PROBE too when a probe is fitted
EVAL_AVERAGE = "eval_average"  # the suite's unweighted mean of its tasks' main metrics (DataComp's average)
TASK_PREFIX, MAIN_METRIC = "task/", "main_metric"  # a task's metrics are task/<name>/<metric>
VERSION_TAGS = (EVAL_AVERAGE, *ZERO_SHOT[:2], RETRIEVAL[0], RETRIEVAL[3], LINEAR_PROBE)  # suite, top-1/5, R@1, probe
GATE = (EVAL_AVERAGE, *ZERO_SHOT)  # what the promotion gate re-measures on the champion; the first decides
SUMMARY = (EVAL_AVERAGE, *ZERO_SHOT, LINEAR_PROBE)  # the report's summary table
# with train.exclude_classes: zero-shot top-1 of the test images of the classes held out of training ("unseen") and of
# the others, classified among all classes, and of the unseen classes' images among the unseen classes only
HELD_OUT_CLASSES = ("zero_shot_top1_unseen_classes", "zero_shot_top1_seen_classes",
                    "zero_shot_top1_unseen_among_unseen")


def task_metric(task: str, metric: str = MAIN_METRIC) -> str:
    """The flat key of one task's metric in metrics.json."""
    return f"{TASK_PREFIX}{task}/{metric}"


def is_task_main_metric(key: str) -> bool:
    return key.startswith(TASK_PREFIX) and key.endswith("/" + MAIN_METRIC)
