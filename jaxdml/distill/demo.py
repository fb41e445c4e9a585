"""The embedded distillation demo: a teacher and a student on the bundled digits, the student trained plain,
with Hinton KD and with LeTKD; prints the three accuracies (and the teacher's, and the student's with the
label-supervised template-matching block instead of a teacher).

    python -m jaxdml.distill.demo --workdir runs/kd_digits [--seeds 0 1 2]

Runs ``python -m jaxdml.main`` with experiments/kd_digits_teacher.py, then experiments/kd_digits_student.py:
{none,kd,letkd,template} (installed as ``jaxdml.experiments``), each in its own workdir under
``--workdir/seed<k>`` (reruns resume, or only re-evaluate finished runs). With several seeds it prints the mean
and standard deviation over them.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

STUDENTS = ("none", "kd", "letkd", "template")
LABELS = {"teacher": "teacher (ResNet-20)", "none": "student ResNet-8, plain", "kd": "student, Hinton KD",
          "letkd": "student, LeTKD", "template": "student + template block"}


def experiment(name: str) -> str:
    """The path of an experiment file of the installed package (the checkout's experiments/ folder)."""
    return str(importlib.resources.files("jaxdml.experiments") / name)


def run_seed(workdir: Path, seed: int) -> dict[str, float]:
    """Top-1 accuracies (%) of the teacher and the four students for one seed."""
    root = workdir / f"seed{seed}"
    runs = [("teacher", experiment("kd_digits_teacher.py"), [])]
    for method in STUDENTS:
        teacher = [f"--config.distill.teacher={root / 'teacher'}"] if method in ("kd", "letkd") else []
        runs.append((method, f"{experiment('kd_digits_student.py')}:{method}", teacher))
    results = {}
    for name, config, extra in runs:
        start = time.perf_counter()
        command = [sys.executable, "-m", "jaxdml.main", f"--config={config}", f"--workdir={root / name}",
                   f"--config.seed={seed}", "--config.train.progress_bar=False", *extra]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"{name} (seed {seed}) failed with status {done.returncode}: {' '.join(command)}")
        summary = json.loads((root / name / "summary.json").read_text())
        results[name] = 100.0 * summary["final"]["accuracy"]
        print(f"seed {seed}  {LABELS[name]:<26} top-1 {results[name]:6.2f}%  ({time.perf_counter() - start:5.1f} s)",
              flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdml.distill.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/kd_digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    per_seed = [run_seed(Path(args.workdir).absolute(), seed) for seed in args.seeds]
    print(f"\ntest top-1 accuracy on unseen handwriting, {len(per_seed)} seed(s) "
          f"({time.perf_counter() - start:.0f} s in all):")
    for name in ("teacher", *STUDENTS):
        values = np.array([r[name] for r in per_seed])
        spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
        print(f"  {LABELS[name]:<26} {values.mean():6.2f}{spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
