"""Reruns the 1-vs-8-device measurements quoted in README.md and tests/test_sharding.py; prints them.

    python benchmarks/device_drift.py [--preset readme|test] [--workdir runs/device_drift] [--jobs 1]
        [--steps N ...] [--seeds K ...] [--fresh]

Every run is ``python tests/sharding_worker.py OUT.npz WORKDIR STEPS [KEY=VALUE ...]`` (experiments/digit_pairs.py
trained through the trainer, every step's loss logged) in its own process on N emulated CPU devices, with the
environment tests/test_sharding.py gives it (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
``JAX_PLATFORMS=cpu``, tests/ and the repository first on ``PYTHONPATH``).

* ``--preset readme`` (default): README.md, "Running experiments", the **Devices.** bullet. digit_pairs.py as is,
  ``train.num_steps`` 40 and 400 (``--steps``), seeds 0 and 1 (``--seeds``: the first on 1 and 8 devices, the others
  on 1 device). Prints for each step count: the final parameters' relative distance
  sqrt(sum (a - b)^2 / sum a^2) over all ``final/`` arrays between 1 and 8 devices (first seed) and, for
  comparison, between the first and each other seed on 1 device, in %; the largest relative loss difference
  between 1 and 8 devices over the first 5 steps; P@1 and MAP@R (%) of every run; then the README's sentence
  with the new numbers filled in.
* ``--preset test``: the configuration of tests/test_sharding.py's
  ``test_a_real_run_on_one_and_eight_devices_drifts_apart_only_from_rounding`` (``LONG_STEPS`` steps and the
  ``LONG`` overrides, imported from the test), seeds 0 1 2, each on 1 and 8 devices. Prints one row per quantity
  of the test's ``measured_and_bound`` (relative loss differences: largest over the first 5 steps, median and
  largest over the run; the parameters' relative distance after the run; P@1 and MAP@R differences in points),
  computed as the test computes them: the value of each seed, their max and median, and the value the test
  quotes as measured and its bound (both read from the test's source). Then, per seed, whether the initial
  parameters are identical on 1 and 8 devices and both runs' P@1 (the test asks for >= 40%).

Each run lives in ``<workdir>/<preset>/steps<S>/devices<N>_seed<K>/``: ``run.log`` (the worker's stdout and
stderr), ``result.npz`` (the worker's output), ``run.json`` (its settings, wall time and the commit measured) and
``train/`` (the trainer's workdir). A run whose ``result.npz`` exists with the same settings is reused (its
recorded wall time and commit are printed) unless ``--fresh``. Runs go ``--jobs`` at a time (1 by default: wall
times are honest only then, parallel runs share the cores). A failing run prints the tail of its log and the script
exits with status 1. Prints the commit measured (``git rev-parse --short HEAD``, plus "(uncommitted changes)" when
tracked files under jaxdml/, kernels/, experiments/ or tests/sharding_worker.py differ from it) at the start and at
the end, and each run's wall time. Everything printed also goes to ``<workdir>/results.json``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import embedded_results  # this folder: run as a script, it is on sys.path
import numpy as np
from embedded_results import Printer

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
WORKER = TESTS / "sharding_worker.py"
WATCHED = ("jaxdml", "kernels", "experiments", "tests/sharding_worker.py")
README_STEPS = (40, 400)
README_SEEDS = (0, 1)
TEST_SEEDS = (0, 1, 2)
METRICS = (("precision_at_1", "P@1"), ("map_at_r", "MAP@R"))

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Run:
    preset: str
    steps: int
    devices: int
    seed: int
    overrides: tuple[str, ...]  # the preset's, then seed=K

    def folder(self, root: Path) -> Path:
        return root / self.preset / f"steps{self.steps}" / f"devices{self.devices}_seed{self.seed}"

    def spec(self) -> dict[str, Any]:
        return {"steps": self.steps, "devices": self.devices, "seed": self.seed, "overrides": list(self.overrides)}

    def __str__(self) -> str:
        return f"{self.steps} steps, {self.devices} device{'s' if self.devices > 1 else ''}, seed {self.seed}"


@dataclasses.dataclass
class Result:
    arrays: Arrays
    wall_s: float
    reused: bool
    measured_at: dict[str, Any]  # commit_state() of the invocation that trained it


def commit_state() -> dict[str, Any]:
    return embedded_results.commit_state(WATCHED)


def same_code(state: dict[str, Any]) -> tuple[str, str]:
    """What two commit states must share for their runs to have trained the same code."""
    return state["commit"], state["diff_sha256"]


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def test_configuration() -> tuple[int, tuple[str, ...]]:
    """``LONG_STEPS`` and ``LONG`` of tests/test_sharding.py."""
    sys.path.insert(0, str(TESTS))
    try:
        from test_sharding import LONG, LONG_STEPS
    finally:
        sys.path.remove(str(TESTS))
    return int(LONG_STEPS), tuple(LONG)


def quoted_in_test() -> dict[str, tuple[float, float]]:
    """quantity -> (value quoted as measured, bound), from ``measured_and_bound`` in tests/test_sharding.py's source
    (empty if the test no longer has that literal)."""
    quoted = {}
    for node in ast.walk(ast.parse((TESTS / "test_sharding.py").read_text())):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "measured_and_bound" for t in node.targets)):
            for key, value in zip(node.value.keys, node.value.values):
                try:
                    if isinstance(value, ast.Tuple) and len(value.elts) == 3:
                        quoted[ast.literal_eval(key)] = (ast.literal_eval(value.elts[1]),
                                                         ast.literal_eval(value.elts[2]))
                except ValueError:
                    continue
    return quoted


def start(run: Run, folder: Path) -> tuple[subprocess.Popen[bytes], float]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("result.npz", "result.tmp.npz", "run.json"):
        (folder / stale).unlink(missing_ok=True)
    shutil.rmtree(folder / "train", ignore_errors=True)  # the trainer would resume from its checkpoints
    # As tests/test_sharding.py's start(): this checkout's jaxdml, whatever the environment has installed.
    path = os.pathsep.join([str(TESTS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={run.devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    command = [sys.executable, str(WORKER), str(folder / "result.tmp.npz"), str(folder / "train"), str(run.steps),
               *run.overrides]
    with open(folder / "run.log", "wb") as log:
        log.write(f"XLA_FLAGS={env['XLA_FLAGS']} JAX_PLATFORMS=cpu {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, time.perf_counter()


def load(run: Run, folder: Path) -> Arrays:
    with np.load(folder / "result.npz") as data:
        arrays = dict(data)
    if int(arrays["devices"]) != run.devices:
        raise SystemExit(f"{folder / 'result.npz'}: trained on {int(arrays['devices'])} devices, not {run.devices}")
    return arrays


def reusable(run: Run, folder: Path) -> Result | None:
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("spec") != run.spec() or not (folder / "result.npz").exists():
        return None
    return Result(load(run, folder), record["wall_s"], True, record["measured_at"])


def run_all(runs: list[Run], root: Path, jobs: int, fresh: bool, state: dict[str, Any],
            out: Printer) -> dict[Run, Result]:
    """Runs (or reuses) ``runs`` in order, ``jobs`` at a time; exits at the first failure."""
    done: dict[Run, Result] = {}
    pending: list[Run] = []
    for run in runs:
        result = None if fresh else reusable(run, run.folder(root))
        if result is None:
            pending.append(run)
        else:
            done[run] = result
            out(f"[{len(done)}/{len(runs)}] {run}: reused, {duration(result.wall_s)} ({result.wall_s:.1f} s) "
                f"at {result.measured_at['label']}")
    running: dict[Run, tuple[subprocess.Popen[bytes], float]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                running[run] = start(run, run.folder(root))
            for run, (proc, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run]
                wall, folder = time.perf_counter() - began, run.folder(root)
                if proc.returncode != 0:
                    tail = (folder / "run.log").read_text(errors="replace").splitlines()[-40:]
                    out(f"FAILED: {run} (exit {proc.returncode}); last lines of {folder / 'run.log'}:")
                    out("\n".join("    " + line for line in tail))
                    raise SystemExit(1)
                (folder / "result.tmp.npz").replace(folder / "result.npz")
                record = {"spec": run.spec(), "wall_s": wall, "measured_at": state}
                (folder / "run.json").write_text(json.dumps(record, indent=2) + "\n")
                done[run] = Result(load(run, folder), wall, False, state)
                out(f"[{len(done)}/{len(runs)}] {run}: {duration(wall)} ({wall:.1f} s)")
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
    return {run: done[run] for run in runs}


def relative_distance(a: Arrays, b: Arrays) -> float:
    """sqrt(sum (a - b)^2 / sum a^2) over all ``final/`` arrays, as tests/test_sharding.py computes it."""
    keys = [k for k in a if k.startswith("final/")]
    if keys != [k for k in b if k.startswith("final/")]:
        raise SystemExit("the two runs' parameters differ in names")
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in keys) / sum(np.sum(a[k] ** 2) for k in keys)))


def loss_differences(one: Arrays, eight: Arrays) -> np.ndarray:
    return np.abs(one["losses"] - eight["losses"]) / np.abs(one["losses"])


def metric(result: Arrays, name: str) -> float:
    return float(result[f"metric/{name}"])


def readme_report(runs: dict[Run, Result], steps: list[int], seeds: list[int], out: Printer) -> dict[str, Any]:
    first, others = seeds[0], seeds[1:]
    by = {(r.steps, r.devices, r.seed): res.arrays for r, res in runs.items()}
    report: dict[str, Any] = {}
    out("README.md, Running experiments, Devices (experiments/digit_pairs.py, 1 vs 8 emulated CPU devices):")
    for n in steps:
        one, eight = by[n, 1, first], by[n, 8, first]
        row: dict[str, Any] = {
            "parameters_1_vs_8_percent": 100 * relative_distance(one, eight),
            "loss_first_5_steps_1_vs_8": float(loss_differences(one, eight)[:5].max()),
            "parameters_seeds_percent": {k: 100 * relative_distance(one, by[n, 1, k]) for k in others},
            "metrics_percent": {f"{d} device{'s' if d > 1 else ''}, seed {k}": {
                label: 100 * metric(by[n, d, k], name) for name, label in METRICS}
                for d, k in [(1, first), (8, first), *((1, k) for k in others)]},
        }
        report[str(n)] = row
        out(f"\n{n} steps:")
        out(f"    parameters, 1 vs 8 devices (seed {first}): {row['parameters_1_vs_8_percent']:.3g}% apart (relative)")
        for k, value in row["parameters_seeds_percent"].items():
            out(f"    parameters, seed {first} vs seed {k} (1 device): {value:.3g}% apart (relative)")
        out(f"    losses, 1 vs 8 devices (seed {first}), first 5 steps: largest relative difference "
            f"{row['loss_first_5_steps_1_vs_8']:.1e}")
        out(f"    {'':<20} " + "  ".join(f"{label:>6}" for _, label in METRICS))
        for name, values in row["metrics_percent"].items():
            out(f"    {name:<20} " + "  ".join(f"{values[label]:6.2f}" for _, label in METRICS))
    if others:
        k = others[0]
        metrics = {n: report[str(n)]["metrics_percent"] for n in steps}
        one, eight, seed = f"1 device, seed {first}", f"8 devices, seed {first}", f"1 device, seed {k}"
        at = lambda n: f"{n} steps" if n == steps[0] else str(n)
        apart = " and ".join(f"{report[str(n)]['parameters_1_vs_8_percent']:.2g}% "
                             + ("apart (relative) " if n == steps[0] else "") + f"after {at(n)}" for n in steps)
        p1 = " and ".join(f"{metrics[n][one]['P@1']:.2f} vs {metrics[n][eight]['P@1']:.2f} at {at(n)}" for n in steps)
        last = steps[-1]
        seeds_p1 = ", ".join(f"{metrics[n][one]['P@1']:.2f} vs {metrics[n][seed]['P@1']:.2f} at {at(n)}"
                             for n in steps)
        out(f"\nAs the README words it: parameters {apart}; P@1 {p1} (MAP@R {metrics[last][one]['MAP@R']:.2f} vs "
            f"{metrics[last][eight]['MAP@R']:.2f}), less than seeds {first} and {k} differ (P@1 {seeds_p1}).")
    return report


def test_quantities(one: Arrays, eight: Arrays) -> dict[str, float]:
    """The quantities of ``measured_and_bound`` in tests/test_sharding.py, computed as the test does."""
    loss = loss_differences(one, eight)
    params = relative_distance(one, eight)
    metrics = {m: abs(metric(one, m) - metric(eight, m)) for m in ("precision_at_1", "map_at_r")}
    return {
        "loss, first 5 steps": float(loss[:5].max()),
        "loss, median over the run": float(np.median(loss)),
        "loss, largest over the run": float(loss.max()),
        "parameters after the run": params,
        "P@1 (points)": 100 * metrics["precision_at_1"],
        "MAP@R (points)": 100 * metrics["map_at_r"],
    }


def test_report(runs: dict[Run, Result], steps: list[int], seeds: list[int], out: Printer) -> dict[str, Any]:
    by = {(r.steps, r.devices, r.seed): res.arrays for r, res in runs.items()}
    quoted, long_steps = quoted_in_test(), test_configuration()[0]
    report: dict[str, Any] = {}
    for n in steps:
        per_seed = {k: test_quantities(by[n, 1, k], by[n, 8, k]) for k in seeds}
        fmt = lambda key, v: f"{v:.2f}" if "points" in key else f"{v:.1e}"
        out(f"tests/test_sharding.py, test_a_real_run_on_one_and_eight_devices_drifts_apart_only_from_rounding "
            f"({n} steps, 1 vs 8 devices):")
        if n != long_steps:
            out(f"(the test's measured values and bounds are for {long_steps} steps)")
        out()
        out("| quantity | " + " | ".join(f"seed {k}" for k in seeds) + " | max | median | test: measured | bound |")
        out("|---|" + "---|" * (len(seeds) + 4))
        rows: dict[str, Any] = {}
        for key in per_seed[seeds[0]]:
            values = [per_seed[k][key] for k in seeds]
            peak, middle = max(values), statistics.median(values)
            measured, bound = quoted.get(key, (None, None))
            rows[key] = {"per_seed": dict(zip(map(str, seeds), values)), "max": peak, "median": middle,
                         "quoted_measured": measured, "bound": bound}
            cells = [fmt(key, v) for v in (*values, peak, middle)]
            cells += ["-", "-"] if bound is None else [fmt(key, measured), f"{bound:g}"]
            out(f"| {key} | " + " | ".join(cells) + " |")
        out()
        for k in seeds:
            one, eight = by[n, 1, k], by[n, 8, k]
            same = all(np.array_equal(one[f"initial/{key[6:]}"], eight[f"initial/{key[6:]}"])
                       for key in one if key.startswith("final/"))
            out(f"seed {k}: initial parameters {'identical' if same else 'DIFFERENT'} on 1 and 8 devices; "
                f"P@1 {100 * metric(one, 'precision_at_1'):.2f} (1 device), "
                f"{100 * metric(eight, 'precision_at_1'):.2f} (8 devices)")
        report[str(n)] = {"quantities": rows, "initial_identical": {str(k): same for k in seeds}}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("readme", "test"), default="readme")
    parser.add_argument("--workdir", type=Path, default=Path("runs/device_drift"))
    parser.add_argument("--steps", type=int, nargs="+", help="step counts (default: readme 40 400; test LONG_STEPS)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: readme 0 1; test 0 1 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (wall times are for --jobs 1)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs whose result.npz exists")
    args = parser.parse_args()
    if args.preset == "readme":
        steps, seeds, overrides = list(args.steps or README_STEPS), list(args.seeds or README_SEEDS), ()
        layout = [(1, seeds[0]), (8, seeds[0]), *((1, k) for k in seeds[1:])]
    else:
        long_steps, overrides = test_configuration()
        steps, seeds = list(args.steps or [long_steps]), list(args.seeds or TEST_SEEDS)
        layout = [(d, k) for k in seeds for d in (1, 8)]
    runs = [Run(args.preset, n, d, k, (*overrides, f"seed={k}")) for n in steps for d, k in layout]

    root, out = args.workdir.resolve(), Printer()
    begin, clock = commit_state(), time.perf_counter()
    out(f"commit {begin['label']}")
    if begin["uncommitted"]:
        out(f"    {len(begin['uncommitted'])} modified tracked files (listed in results.json)")
    out(f"preset {args.preset}: steps {steps}, seeds {seeds}, overrides {list(overrides) or 'none'}, "
        f"jobs {args.jobs}, workdir {root}\n")
    results = run_all(runs, root, args.jobs, args.fresh, begin, out)
    out(f"\nall runs: {duration(time.perf_counter() - clock)}\n")
    report = (readme_report if args.preset == "readme" else test_report)(results, steps, seeds, out)
    end = commit_state()
    out(f"\nmeasured at commit {end['label']}")
    if same_code(begin) != same_code(end):
        out(f"WARNING: the tree changed during the runs (start: {begin['label']}); rerun for a single state.")
    older = [f"{r} at {res.measured_at['label']}" for r, res in results.items()
             if res.reused and same_code(res.measured_at) != same_code(end)]
    if older:
        out("WARNING: reused runs trained at another state of the code (rerun with --fresh):\n    "
            + "\n    ".join(older))
    record = {"command": [sys.executable, *sys.argv], "preset": args.preset, "steps": steps, "seeds": seeds,
              "overrides": list(overrides), "jobs": args.jobs, "commit_start": begin, "commit_end": end,
              "printed": out.lines, "report": report,
              "runs": [{**r.spec(), "folder": str(r.folder(root)), "wall_s": res.wall_s, "reused": res.reused,
                        "measured_at": res.measured_at["label"],
                        "metrics": {k[7:]: float(v) for k, v in res.arrays.items() if k.startswith("metric/")}}
                       for r, res in results.items()]}
    (root / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"(written to {root / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
