"""What each stage's process pays before it does any work: wall time and peak RSS of importing what
`clip-pipeline <stage>` imports (the CLI, the launcher and that stage's asset module), against importing every
asset (pipelines.definitions: what each stage process imported before stages were split into modules and what
`dagster dev` loads). Medians of `--repeats` fresh processes, side by side in one run.

    uv run --frozen python benchmarks/stage_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from pipelines.stages import STAGES

HEAVY = ("torch", "mlflow", "transformers", "matplotlib", "dagster")


def measure(code: str) -> tuple[float, float, list[str]]:
    """(wall seconds, peak RSS MiB, heavy libraries loaded) of a fresh interpreter running `code`."""
    probe = (f"import time, resource, sys; t = time.perf_counter(); {code}; "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
             f"','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True, check=True)
    seconds, rss, heavy = (out.stdout.strip().split(" ") + [""])[:3]
    return float(seconds), float(rss), [h for h in heavy.split(",") if h]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {s.name: f"import pipelines.cli, pipelines.launch, {s.module}" for s in STAGES}
    cases["every asset (pipelines.definitions)"] = "import pipelines.cli, pipelines.definitions"
    print(f"{'process':<38} {'import s':>9} {'peak MiB':>9}  heavy libraries loaded")
    for name, code in cases.items():
        runs = [measure(code) for _ in range(args.repeats)]
        print(f"{name:<38} {statistics.median(r[0] for r in runs):>9.2f} {statistics.median(r[1] for r in runs):>9.0f}"
              f"  {', '.join(runs[0][2]) or '-'}")


if __name__ == "__main__":
    main()
