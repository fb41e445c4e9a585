"""Reruns every embedded-data experiment quoted in README.md and in experiment docstrings; prints the tables.

    python benchmarks/embedded_results.py [--workdir runs/embedded_results] [--seeds 0 1 2]
        [--only digit_pairs collage distill ccp xbml poolings] [--jobs 1] [--extra=--config.train.num_steps=4 ...]

Runs, each as ``python -m jaxdml.main`` in its own workdir ``<workdir>/<group>/seed<k>/<name>`` (stdout and
stderr in ``run.log`` there; reruns resume, and finished runs are only re-evaluated):

* ``digit_pairs``: experiments/digit_pairs.py (about 3 min per seed on 2 CPU cores);
* ``collage``: experiments/gap_digits_collage.py and gsp_digits_collage.py (3-4.5 min each);
* ``distill``: experiments/kd_digits_teacher.py, then kd_digits_student.py:none|kd|letkd|template, kd and
  letkd distilling from the same seed's teacher (5-6 min per seed); then ``python -m jaxdml.probe`` on the
  plain and the LeTKD student's block ``layer3_0`` (the letKD supplement's Table 4 on the digits);
* ``ccp``: experiments/ccp_digits.py:plain and :ccp, each four folds (MLRC protocol) and their concatenation
  (about 8 min per run; 49 min for seeds 0 1 2 at d0ea5f7);
* ``xbml``: experiments/gap_digits_collage.py and xbml_digits_collage.py:r1 and :r2 (4-5 min each; 41 min for
  seeds 0 1 2 at 03a1cfa);
* ``poolings``: experiments/pooling_digits_collage.py:<pooling> for the nine baseline poolings; with ``collage``
  in the same invocation its table also has the GAP and GSP rows.

About 50 minutes for seeds 0 1 2 of the first three groups with ``--jobs 1`` on 2 CPU cores (54 min at d9073a8;
``--jobs 1`` is the honest setting for the wall times: parallel runs share the cores). Prints the commit measured
(``git rev-parse --short HEAD``, plus "(uncommitted changes)" when tracked files under jaxdml/, kernels/ or
experiments/ differ from it) at the start and at the end, each run's wall time, then the README tables (mean ±
sample std over the seeds, in %) and the per-seed lines of the experiment docstrings. Everything printed also
goes to ``<workdir>/results.json``.
Every number comes from the runs' ``summary.json`` and ``config.json``; nothing is imported from jaxdml.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("jaxdml", "kernels", "experiments")
STUDENTS = ("none", "kd", "letkd", "template")
BASELINES = ("cbam", "crow", "delf", "gem", "gsop", "netvlad", "otp", "soap", "weldon")  # pooling_digits_collage.py
# group -> (run name, experiment argument of --config, run whose workdir is distill.teacher)
GROUPS: dict[str, list[tuple[str, str, str | None]]] = {
    "digit_pairs": [("digit_pairs", "experiments/digit_pairs.py", None)],
    "collage": [("gap", "experiments/gap_digits_collage.py", None), ("gsp", "experiments/gsp_digits_collage.py", None)],
    "distill": [("teacher", "experiments/kd_digits_teacher.py", None)]
    + [(m, f"experiments/kd_digits_student.py:{m}", "teacher" if m in ("kd", "letkd") else None) for m in STUDENTS],
    "ccp": [("plain", "experiments/ccp_digits.py:plain", None), ("ccp", "experiments/ccp_digits.py:ccp", None)],
    "xbml": [("gap", "experiments/gap_digits_collage.py", None)]
    + [(r, f"experiments/xbml_digits_collage.py:{r}", None) for r in ("r1", "r2")],
    "poolings": [(p, f"experiments/pooling_digits_collage.py:{p}", None) for p in BASELINES],
}
RETRIEVAL = (("precision_at_1", "P@1"), ("map_at_r", "MAP@R"), ("r_precision", "R-precision"))


@dataclasses.dataclass(frozen=True)
class Run:
    group: str
    seed: int
    name: str
    config: str
    needs: str | None

    def workdir(self, root: Path, name: str | None = None) -> Path:
        return root / self.group / f"seed{self.seed}" / (name or self.name)

    def __str__(self) -> str:
        return f"{self.group} seed {self.seed} {self.name}"


@dataclasses.dataclass
class Result:
    summary: dict[str, Any]
    config: dict[str, Any]
    wall_s: float
    resumed: bool

    def setting(self, dotted: str) -> Any:
        value: Any = self.config
        for key in dotted.split("."):
            value = value[key]
        return value


class Printer:
    """Prints and keeps every line, for results.json."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.extend(line.split("\n"))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def commit_state(watched: tuple[str, ...] = WATCHED) -> dict[str, Any]:
    """HEAD, and which of the ``watched`` tracked paths differ from it (also used by device_drift.py)."""
    changed = [line[3:] for line in git("status", "--porcelain", "--", *watched).splitlines()
               if not line.startswith("??")]
    head = git("rev-parse", "--short", "HEAD").strip()
    return {"commit": head, "uncommitted": changed, "label": head + (" (uncommitted changes)" if changed else ""),
            "diff_sha256": hashlib.sha256(git("diff", "HEAD", "--", *watched).encode()).hexdigest()}


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def start(run: Run, root: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], float, bool]:
    workdir = run.workdir(root)
    workdir.mkdir(parents=True, exist_ok=True)
    resumed = (workdir / "checkpoints").exists() or (workdir / "fold_0" / "checkpoints").exists()
    (workdir / "summary.json").unlink(missing_ok=True)  # the numbers must come from this invocation
    command = [sys.executable, "-m", "jaxdml.main", f"--config={run.config}", f"--workdir={workdir}",
               f"--config.seed={run.seed}", "--config.train.progress_bar=False"]
    if run.needs:
        command.append(f"--config.distill.teacher={run.workdir(root, run.needs)}")
    with open(workdir / "run.log", "wb") as log:
        log.write((" ".join(command + extra) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(command + extra, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc, time.perf_counter(), resumed


def run_all(runs: list[Run], root: Path, extra: list[str], jobs: int, out: Printer) -> dict[Run, Result]:
    """Runs ``runs`` in order, ``jobs`` at a time, each after the run it needs; stops at the first failure."""
    pending, done, finished = list(runs), dict[Run, Result](), set[tuple[str, int, str]]()
    running: dict[Run, tuple[subprocess.Popen[bytes], float, bool]] = {}
    try:
        while pending or running:
            for run in list(pending):
                if len(running) < jobs and (run.needs is None or (run.group, run.seed, run.needs) in finished):
                    pending.remove(run)
                    running[run] = start(run, root, extra)
            for run, (proc, began, resumed) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run]
                wall, workdir = time.perf_counter() - began, run.workdir(root)
                if proc.returncode != 0:
                    tail = (workdir / "run.log").read_text(errors="replace").splitlines()[-40:]
                    out(f"FAILED: {run} (exit {proc.returncode}); last lines of {workdir / 'run.log'}:")
                    out("\n".join("    " + line for line in tail))
                    raise SystemExit(1)
                finished.add((run.group, run.seed, run.name))
                config = workdir / "config.json"
                if not config.exists():  # a fold protocol: one run per fold, the first fold's config
                    config = workdir / "fold_0" / "config.json"
                done[run] = Result(json.loads((workdir / "summary.json").read_text()),
                                   json.loads(config.read_text()), wall, resumed)
                out(f"[{len(done)}/{len(runs)}] {run}: {duration(wall)} ({wall:.1f} s"
                    f"{', resumed: not a full training time' if resumed else ''})")
            time.sleep(0.2)
    finally:
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.terminate()  # jaxdml saves a checkpoint on SIGTERM; a rerun resumes
            proc.wait()
    return done


def stats(values: list[float]) -> str:
    """Mean ± sample standard deviation (ddof=1) of fractions, in percent."""
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def per_seed(values: list[float]) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def arch(name: str) -> str:
    return f"ResNet-{name.removeprefix('resnet')}" if name.removeprefix("resnet").isdigit() else name


def digit_pairs_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer) -> None:
    runs = res["digit_pairs"]
    steps = runs[0].setting("train.num_steps")
    rows = [("untrained", "initial"), (f"trained ({steps} steps)", "final")]
    rows = [(label, key) for label, key in rows if all(r.summary[key] for r in runs)]
    out(f"README, Quick start (seeds {' / '.join(map(str, seeds))}, mean ± standard deviation):\n")
    out("| | P@1 (= R@1) | MAP@R | R-precision |\n|---|---|---|---|")
    for label, key in rows:
        out(f"| {label} | " + " | ".join(stats([r.summary[key][m] for r in runs]) for m, _ in RETRIEVAL) + " |")
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    out(f"\nexperiments/digit_pairs.py docstring (seed {seeds[0]}; seeds {span}: mean +- std):")
    for label, key in rows:
        cells = [f"{name} {100 * runs[0].summary[key][m]:5.2f} ({stats([r.summary[key][m] for r in runs])})"
                 for m, name in RETRIEVAL]
        out(f"    {label.split()[0]:<11} " + "  ".join(cells).replace("±", "+-"))


def collage_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer) -> None:
    gap, gsp = res["gap"], res["gsp"]
    zsr = gsp[0].setting("loss.zsr.weight")
    out(f"README, GSP (test classes, seeds {' / '.join(map(str, seeds))}):\n")
    out("| pooling | R@1 | MAP@R | R-precision |\n|---|---|---|---|")
    for label, runs in (("GAP", gap), (f"GSP (+ {zsr:g} ZSR)" if zsr else "GSP", gsp)):
        out(f"| {label} | " + " | ".join(stats([r.summary["final"][m] for r in runs]) for m, _ in RETRIEVAL) + " |")
    diffs = [100 * (s.summary["final"]["map_at_r"] - g.summary["final"]["map_at_r"]) for s, g in zip(gsp, gap)]
    ahead = sum(d > 0 for d in diffs)
    where = "on every seed" if ahead == len(diffs) else f"on {ahead} of {len(diffs)} seeds"
    out(f"\nGSP is ahead {where} (MAP@R {', '.join(f'{d:+.1f}' for d in diffs)}).")
    out("\ngsp_digits_collage.py / gap_digits_collage.py docstrings:")
    for label, runs in (("GSP", gsp), ("GAP", gap)):
        values = {name: [r.summary["final"][m] for r in runs] for m, name in RETRIEVAL[:2]}
        cells = [f"{name} {per_seed(v)} = {stats(v)}" for name, v in values.items()]
        out(f"    {label}  " + "   ".join(cells).replace("P@1", "R@1").replace("±", "+-"))
    if all(r.summary["initial"] for r in gsp):
        first = [100 * statistics.fmean(r.summary["initial"][m] for r in gsp) for m, _ in RETRIEVAL[:2]]
        out(f"(untrained: R@1 {first[0]:.1f}, MAP@R {first[1]:.1f})   <- GSP network, mean over the seeds")


def xbml_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer) -> None:
    gap = res["gap"]
    weight = res["r1"][0].setting("loss.xbml.weight")
    out(f"README, XBML (digit collages, test classes, seeds {' / '.join(map(str, seeds))}):\n")
    out("| head and loss | R@1 | MAP@R | R-precision | MAP@R ahead of GAP |\n|---|---|---|---|---|")
    rows = [("GAP (contrastive)", gap, None)] + [
        (f"XBML {reading} ({1 - weight:g} contrastive + {weight:g} XBML)", res[reading], reading)
        for reading in ("r1", "r2")]
    for label, runs, reading in rows:
        cells = [stats([r.summary["final"][m] for r in runs]) for m, _ in RETRIEVAL]
        diffs = [100 * (x.summary["final"]["map_at_r"] - g.summary["final"]["map_at_r"]) for x, g in zip(runs, gap)]
        ahead = "" if reading is None else f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds " \
            f"({', '.join(f'{d:+.2f}' for d in diffs)})"
        out(f"| {label} | " + " | ".join(cells) + f" | {ahead} |")
    out("\nper seed (R@1; MAP@R):")
    for label, runs, _ in rows:
        out(f"    {label.split(' (')[0]:<8} R@1 {per_seed([r.summary['final']['precision_at_1'] for r in runs])}   "
            f"MAP@R {per_seed([r.summary['final']['map_at_r'] for r in runs])}")


def pooling_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer,
                   collage: dict[str, list[Result]] | None) -> None:
    """The README's comparison of poolings; GAP and GSP rows come from the ``collage`` group when it ran too."""
    labels = {"cbam": "CBAM", "crow": "CroW", "delf": "DELF", "gem": "GeM", "gsop": "GSoP", "netvlad": "NetVLAD",
              "otp": "OTP", "soap": "SOAP", "weldon": "WELDON"}
    rows = [(labels[name], res[name]) for name in BASELINES]
    if collage:
        zsr = collage["gsp"][0].setting("loss.zsr.weight")
        rows = [("GAP", collage["gap"]), *rows, (f"GSP (+ {zsr:g} ZSR)" if zsr else "GSP", collage["gsp"])]
    out(f"README, poolings (digit collages, test classes, seeds {' / '.join(map(str, seeds))}):\n")
    out("| pooling | R@1 | MAP@R | R-precision |\n|---|---|---|---|")
    for label, runs in rows:
        out(f"| {label} | " + " | ".join(stats([r.summary["final"][m] for r in runs]) for m, _ in RETRIEVAL) + " |")
    out("\nper seed (R@1; MAP@R):")
    for label, runs in rows:
        out(f"    {label:<16} R@1 {per_seed([r.summary['final']['precision_at_1'] for r in runs])}"
            f"   MAP@R {per_seed([r.summary['final']['map_at_r'] for r in runs])}")


def distill_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer, root: Path | None = None) -> None:
    acc = {name: [r.summary["final"]["accuracy"] for r in res[name]] for name in ("teacher", *STUDENTS)}
    kd, letkd, student = res["kd"][0], res["letkd"][0], arch(res["none"][0].setting("model.backbone"))
    words = f"{letkd.setting('distill.letkd.num_words')} words"
    if letkd.setting("distill.letkd.intermediate"):
        words = (f"letKD-2: {words}, LDA {letkd.setting('distill.letkd.lda_dims')}, "
                 f"{letkd.setting('distill.letkd.subclasses')} sub-classes")
    labels = {
        "teacher": f"teacher {arch(res['teacher'][0].setting('model.backbone'))}",
        "none": f"student {student}, cross-entropy only",
        "kd": f"student, Hinton KD (T = {kd.setting('distill.kd_temperature'):g}, "
              f"{kd.setting('distill.ce_weight'):g} CE + {kd.setting('distill.kd_weight'):g} KD)",
        "letkd": f"student, LeTKD ({words})",
        "template": "student + template-matching block, no teacher",
    }
    out(f"README, knowledge distillation:\n\n| test top-1 (%), seeds {' / '.join(map(str, seeds))} | mean ± std |")
    out("|---|---|")
    for name, values in acc.items():
        out(f"| {labels[name]} ({per_seed(values)}) | {stats(values)} |")
    wins = {name: sum(v > p for v, p in zip(acc[name], acc["none"])) for name in ("kd", "letkd", "template")}
    mean = {name: 100 * statistics.fmean(values) for name, values in acc.items()}
    verb = "beats" if mean["kd"] > mean["letkd"] else "trails" if mean["kd"] < mean["letkd"] else "ties with"
    out(f"\nSeeds on which each beats the plain student: Hinton KD {wins['kd']}, LeTKD {wins['letkd']}, "
        f"template block {wins['template']} of {len(seeds)}; Hinton KD {verb} LeTKD on the mean "
        f"({mean['kd']:.2f} vs {mean['letkd']:.2f}).")
    gains = [100 * (t - p) for t, p in zip(acc["template"], acc["none"])]
    gain = statistics.fmean(gains)
    out(f"\nexperiments/template_cifar100.py docstring: the demo's digits version (python -m jaxdml.distill.demo) "
        f"{'gains' if gain >= 0 else 'loses'} {abs(gain):.1f} points over the plain {student}.")
    out(f"    (mean over seeds {' / '.join(map(str, seeds))}; per seed {' / '.join(f'{g:+.2f}' for g in gains)})")
    if root is not None:
        probe_table({name: [probe(root / "distill" / f"seed{seed}" / name) for seed in seeds]
                     for name in ("none", "letkd")}, seeds, out)


PROBE_BLOCK = "layer3_0"  # where kd_digits_student.py:letkd puts its intermediate LeTKD layer


def probe(workdir: Path, block: str = PROBE_BLOCK) -> dict[str, float]:
    """``python -m jaxdml.probe`` on the run's last checkpoint: LDA accuracy on ``block``'s x (and x-hat)."""
    result = subprocess.run([sys.executable, "-m", "jaxdml.probe", f"--workdir={workdir}", f"--block={block}",
                             "--step=latest"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"python -m jaxdml.probe --workdir={workdir} failed:\n{result.stderr[-3000:]}")
    saved = sorted((workdir / "evaluations").glob(f"probe_{block}_step*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(saved[-1].read_text())["metrics"]


def probe_table(probes: dict[str, list[dict[str, float]]], seeds: list[int], out: Printer) -> None:
    """The LDA probe of the plain and the LeTKD student (README, after the distillation table)."""
    out(f"\nREADME, linear probe of {PROBE_BLOCK} (python -m jaxdml.probe; LDA on the locations' mean, fitted on "
        f"the training images, test top-1 %, seeds {' / '.join(map(str, seeds))}):\n")
    out("| student | x: the block's output | x-hat: after the LeTKD layer |\n|---|---|---|")
    labels = {"none": "cross-entropy only", "letkd": "LeTKD (alpha 1)"}
    for name, rows in probes.items():
        cells = [f"{stats([r[k] for r in rows])} ({per_seed([r[k] for r in rows])})" if k in rows[0] else "—"
                 for k in ("lda_x", "lda_x_hat")]
        out(f"| {labels[name]} | {cells[0]} | {cells[1]} |")


def fold_rounds(workdir: Path) -> list[int]:
    """The last CCP round of each fold's run, from its metrics.jsonl."""
    rounds = []
    for fold in sorted(workdir.glob("fold_*")):
        records = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
        rounds.append(max((r["round"] for r in records if r["split"] == "ccp"), default=0))
    return rounds


def ccp_tables(res: dict[str, list[Result]], seeds: list[int], out: Printer, root: Path) -> None:
    plain, ccp = res["plain"], res["ccp"]
    dim, joint = plain[0].summary["embedding_dim"], plain[0].summary["concatenated_dim"]
    folds = len(plain[0].summary["folds"])
    out(f"README, CCP on the embedded digits ({folds} folds; test classes; seeds {' / '.join(map(str, seeds))}, "
        f"mean ± std):\n")
    out(f"| | {dim}-d models (mean of {folds}): P@1 | MAP@R | R-precision | concatenated {joint}-d: P@1 | MAP@R | "
        f"R-precision |\n|---|---|---|---|---|---|---|")
    for label, runs in (("C2", plain), ("C2-CCP", ccp)):
        cells = [stats([r.summary[part][m] for r in runs]) for part in ("mean", "concatenated") for m, _ in RETRIEVAL]
        out(f"| {label} | " + " | ".join(cells) + " |")
    for part in ("mean", "concatenated"):
        diffs = [100 * (c.summary[part]["map_at_r"] - p.summary[part]["map_at_r"]) for c, p in zip(ccp, plain)]
        ahead = sum(d > 0 for d in diffs)
        shown = ", ".join(f"{d:+.2f}" for d in diffs)
        out(f"\nCCP ahead on MAP@R ({part}) on {ahead} of {len(diffs)} seeds ({shown}).")
    rounds = [fold_rounds(root / "ccp" / f"seed{s}" / "ccp") for s in seeds]
    out(f"Rounds reached per fold (seed: folds): {'; '.join(f'{s}: {r}' for s, r in zip(seeds, rounds))}.")
    best = {label: statistics.fmean(f["best_step"] for r in runs for f in r.summary["folds"])
            for label, runs in (("C2", plain), ("C2-CCP", ccp))}
    out(f"Mean best step per fold: C2 {best['C2']:.0f}, C2-CCP {best['C2-CCP']:.0f}.")
    out("\nexperiments/ccp_digits.py docstring (mean +- std over the seeds; P@1 / MAP@R / R-precision):")
    for label, runs in (("plain", plain), ("ccp", ccp)):
        cells = [" / ".join(stats([r.summary[part][m] for r in runs]) for m, _ in RETRIEVAL)
                 for part in ("mean", "concatenated")]
        out(f"    {label:<6} {dim}-d models: {cells[0]}   concatenated: {cells[1]}".replace("±", "+-"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/embedded_results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--extra", action="append", default=[], metavar="--config.KEY=VALUE",
                        help="override applied to every run (repeatable), e.g. --extra=--config.train.num_steps=4")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (timings are for --jobs 1)")
    args = parser.parse_args()
    root, out = args.workdir.resolve(), Printer()
    begin, clock = commit_state(), time.perf_counter()
    out(f"commit {begin['label']}")
    if begin["uncommitted"]:
        out(f"    {len(begin['uncommitted'])} modified tracked files (listed in results.json)")
    out(f"seeds {args.seeds}, groups {args.only}, jobs {args.jobs}, workdir {root}, extra {args.extra or 'none'}\n")
    runs = [Run(group, seed, name, config, needs) for group in args.only for seed in args.seeds
            for name, config, needs in GROUPS[group]]
    done = run_all(runs, root, args.extra, args.jobs, out)
    out(f"\nall runs: {duration(time.perf_counter() - clock)}")
    for group in args.only:
        for seed in args.seeds:
            total = sum(result.wall_s for run, result in done.items() if (run.group, run.seed) == (group, seed))
            out(f"    {group} seed {seed}: {duration(total)}")
    tables = {"digit_pairs": digit_pairs_tables, "collage": collage_tables,
              "distill": lambda res, seeds, printer: distill_tables(res, seeds, printer, root),
              "ccp": lambda res, seeds, printer: ccp_tables(res, seeds, printer, root), "xbml": xbml_tables,
              "poolings": lambda res, seeds, printer: pooling_tables(res, seeds, printer, collage)}
    collage = ({name: [done[r] for r in runs if (r.group, r.name) == ("collage", name)] for name in ("gap", "gsp")}
               if "collage" in args.only else None)
    for group in args.only:
        out()
        by_name = {name: [done[r] for r in runs if (r.group, r.name) == (group, name)] for name, _, _ in GROUPS[group]}
        tables[group](by_name, args.seeds, out)
    end = commit_state()
    out(f"\nmeasured at commit {end['label']}")
    if (begin["commit"], begin["diff_sha256"]) != (end["commit"], end["diff_sha256"]):
        out(f"WARNING: the tree changed during the runs (start: {begin['label']}); rerun for a single state.")
    record = {"command": [sys.executable, *sys.argv], "seeds": args.seeds, "extra": args.extra, "jobs": args.jobs,
              "commit_start": begin, "commit_end": end, "printed": out.lines,
              "runs": [{"group": r.group, "seed": r.seed, "name": r.name, "config": r.config,
                        "workdir": str(r.workdir(root)), "wall_s": done[r].wall_s, "resumed": done[r].resumed,
                        "summary": done[r].summary} for r in runs]}
    (root / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"(written to {root / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
