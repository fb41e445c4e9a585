"""Training on many hosts, with real processes on 127.0.0.1 (``jax.distributed`` over gloo CPU collectives).

Two processes with two CPU devices each must train and evaluate like one process with four devices: the same
losses, final parameters and metrics (up to float32 rounding: the gradient sums are added in another order), for
metric learning and for distillation. A SIGTERM to one of the two processes makes both save the same step and exit
with 143; rerunning both ends bit-identical to an uninterrupted two-process run. Only process 0 writes the files
meant for people. Every test bounds its processes' run time and kills whatever it started.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_helpers import REPO, worker_env

from jaxdml.launch import free_port

TIMEOUT = 240  # seconds for one run of a job (compiling on a loaded 2-core machine included)
STEPS = 6

METRIC_LEARNING = ["--config", str(REPO / "experiments" / "digit_pairs.py"), "--config.model.width=8",
                   "--config.model.embedding_dim=32"]
DISTILLATION = ["--config", f"{REPO / 'experiments' / 'kd_digits_student.py'}:template",
                "--config.model.backbone=resnet8", "--config.optim.step_boundaries=()"]


def common(steps: int, checkpoint_every: int | None = None) -> list[str]:
    return [f"--config.train.num_steps={steps}", "--config.train.log_every=1", f"--config.train.eval_every={steps}",
            f"--config.train.checkpoint_every={checkpoint_every or steps}", "--config.train.progress_bar=False",
            "--config.eval.at_start=True"]


class Job:
    """``python -m jaxdml.main`` as ``processes`` processes of ``devices`` CPU devices each (one process: no
    jax.distributed at all)."""

    def __init__(self, workdir: Path, processes: int, devices: int, args: list[str]):
        self.workdir = workdir
        env = worker_env(devices)
        port = free_port()
        self.logs = [workdir.parent / f"{workdir.name}.process{i}.log" for i in range(processes)]
        self.processes = []
        for i in range(processes):
            flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
            command = [sys.executable, "-m", "jaxdml.main", *args, "--workdir", str(workdir),
                       *(flags if processes > 1 else [])]
            with self.logs[i].open("a") as log:
                self.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                       cwd=REPO))

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.processes]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    def output(self) -> str:
        return "\n".join(f"--- process {i}\n{log.read_text()[-3000:]}" for i, log in enumerate(self.logs))


def run(workdir: Path, processes: int, devices: int, args: list[str]) -> Path:
    job = Job(workdir, processes, devices, args)
    codes = job.wait()
    assert codes == [0] * processes, job.output()
    return workdir


def losses(workdir: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if r["split"] == "train"])


def final_checkpoint(workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The newest checkpoint's arrays (read onto this process's one device) and its metadata."""
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                   "meta": ocp.JsonCheckpointHandler()})
    step = manager.latest_step()
    stored = manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
    manager.close()
    arrays = {jax.tree_util.keystr(p): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(restored["state"])[0]}
    return arrays, dict(restored["meta"])


def assert_same_training(one: Path, two: Path, metrics: tuple[str, ...]) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == STEPS
    np.testing.assert_allclose(a, b, rtol=1e-5)
    (pa, ma), (pb, mb) = final_checkpoint(one), final_checkpoint(two)
    assert ma["step"] == mb["step"] == STEPS and pa.keys() == pb.keys()
    params = [k for k in pa if "params" in k]
    assert len(params) > 10
    # Measured for distillation: parameters 2.8e-6 apart (relative L2), the largest single difference 5e-3 of its
    # array's largest entry (a BatchNorm bias, whose gradient is a nearly cancelling sum over all locations).
    distance = np.sqrt(sum(np.sum((pa[k] - pb[k]) ** 2) for k in params) / sum(np.sum(pa[k] ** 2) for k in params))
    assert distance <= 1e-4
    for key in params:
        scale = max(float(np.abs(pa[key]).max()), 1e-6)
        assert float(np.abs(pa[key] - pb[key]).max()) <= 5e-2 * scale, key
    sa, sb = (json.loads((workdir / "summary.json").read_text()) for workdir in (one, two))
    # The untrained network is the same in both runs and each device embeds the same rows in the same batches: the
    # sharded evaluation must give exactly the same metrics.
    for name in metrics:
        assert sa["initial"][name] == sb["initial"][name], name
    # After training the embeddings differ by rounding, which may swap two nearly tied neighbours (measured: MAP@R
    # 1.2e-5 apart, one swap among 1,500 queries).
    for name in metrics:
        assert sa["final"][name] == pytest.approx(sb["final"][name], abs=1e-3), name


def launch(module: str, args: list[str], log: Path, processes: int = 2, devices: int = 2) -> str:
    """``python -m jaxdml.launch --module <module>``: the command's output (process 0's, then the prefixed lines
    of the others)."""
    command = [sys.executable, "-m", "jaxdml.launch", "--num_processes", str(processes), "--devices_per_process",
               str(devices), "--module", module, "--", *args]
    with log.open("w") as out:  # the launcher's SIGKILL on timeout ends its processes
        result = subprocess.run(command, env=worker_env(), stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT,
                                cwd=REPO)
    text = log.read_text()
    assert result.returncode == 0, text[-5000:]
    return text


@pytest.fixture(scope="module")
def two_process_metric_learning(tmp_path_factory) -> Path:
    """Two processes of two devices, started the way README.md shows: ``python -m jaxdml.launch``."""
    workdir = tmp_path_factory.mktemp("ml") / "two"
    launch("jaxdml.main", [*METRIC_LEARNING, *common(STEPS), "--workdir", str(workdir)], workdir.parent / "launch.log")
    return workdir


def test_two_processes_train_metric_learning_like_one_process_with_four_devices(tmp_path, two_process_metric_learning):
    one = run(tmp_path / "one", 1, 4, [*METRIC_LEARNING, *common(STEPS)])
    assert_same_training(one, two_process_metric_learning, ("precision_at_1", "map_at_r", "r_precision", "nmi"))


def test_only_process_zero_writes_the_files_meant_for_people(two_process_metric_learning):
    workdir = two_process_metric_learning
    assert {p.name for p in workdir.iterdir()} >= {"config.json", "run.json", "metrics.jsonl", "summary.json",
                                                    "checkpoints"}
    history = json.loads((workdir / "run.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start"]  # one process recorded the start
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len({(r["step"], r["split"]) for r in rows})  # each row written once
    lines = (workdir.parent / "launch.log").read_text().splitlines()
    assert [line for line in lines if line.startswith("trained, step")]  # process 0 reports
    assert lines and not [line for line in lines if line.startswith("[process 1]") and "trained" in line]


def test_two_processes_distil_like_one_process_with_four_devices(tmp_path):
    one = run(tmp_path / "one", 1, 4, [*DISTILLATION, *common(STEPS)])
    two = run(tmp_path / "two", 2, 2, [*DISTILLATION, *common(STEPS)])
    assert_same_training(one, two, ("accuracy", "top5_accuracy"))
    assert (two / "export").is_dir()
    # The linear probe of the template block's layer3_0: two processes share the embedding and fit the same probe;
    # one process of four devices probes the same checkpoint to the same accuracies.
    text = launch("jaxdml.probe", [f"--workdir={two}"], tmp_path / "probe.log")
    assert text.count("LDA probe of layer3_0 (x, x-hat)") == 1 and "[process 1] LDA" not in text
    saved = two / "evaluations" / f"probe_layer3_0_step{STEPS}.json"
    probed_by_two = json.loads(saved.read_text())
    saved.unlink()
    result = subprocess.run([sys.executable, "-m", "jaxdml.probe", f"--workdir={two}"], env=worker_env(4),
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    probed_by_one = json.loads(saved.read_text())
    assert probed_by_two["test_images"] == probed_by_one["test_images"] > 0
    for name in ("lda_x", "lda_x_hat"):  # the embeddings agree to rounding: at most one test image may flip
        assert probed_by_two["metrics"][name] == pytest.approx(probed_by_one["metrics"][name],
                                                               abs=1.01 / probed_by_one["test_images"]), name


def _train_steps_logged(workdir: Path) -> int:
    try:
        text = (workdir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return sum('"split": "train"' in line for line in text.splitlines())


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_the_rerun_ends_bit_identical(tmp_path):
    steps = 30
    args = [*METRIC_LEARNING, *common(steps, checkpoint_every=15)]
    uninterrupted = run(tmp_path / "uninterrupted", 2, 2, args)

    workdir = tmp_path / "interrupted"
    job = Job(workdir, 2, 2, args)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _train_steps_logged(workdir) < 2 and time.monotonic() < deadline and job.processes[1].poll() is None:
            time.sleep(0.05)
        job.processes[1].send_signal(signal.SIGTERM)
        codes = job.wait()
    finally:
        job.kill()
    assert codes == [128 + signal.SIGTERM] * 2, job.output()
    _, meta = final_checkpoint(workdir)
    assert 2 <= meta["step"] < steps, f"stopped at step {meta['step']}: not in the middle of the run"
    assert "checkpoint saved" in job.output()

    run(workdir, 2, 2, args)  # the same command again: resumes
    (pa, ma), (pb, mb) = final_checkpoint(uninterrupted), final_checkpoint(workdir)
    assert ma["step"] == mb["step"] == steps
    assert ma["checksums"] == mb["checksums"]  # bit-identical state
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
    np.testing.assert_array_equal(losses(uninterrupted), losses(workdir))
    assert (json.loads((uninterrupted / "summary.json").read_text())["final"] | {"eval_seconds": 0}
            == json.loads((workdir / "summary.json").read_text())["final"] | {"eval_seconds": 0})
    events = [h["event"] for h in json.loads((workdir / "run.json").read_text())["history"]]
    assert events == ["start", "resume"]


def test_a_damaged_checkpoint_is_set_aside_once_and_both_processes_retrain_to_the_same_end(
        two_process_metric_learning, tmp_path):
    workdir = tmp_path / "damaged"
    shutil.copytree(two_process_metric_learning, workdir)
    (workdir / "summary.json").unlink()
    expected, _ = final_checkpoint(two_process_metric_learning)
    step_dir = workdir / "checkpoints" / str(STEPS)
    for f in (p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    job = Job(workdir, 2, 2, [*METRIC_LEARNING, *common(STEPS)])
    assert job.wait() == [0, 0], job.output()
    aside = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith(f"{STEPS}.")]
    assert aside in ([f"{STEPS}.corrupt"], [f"{STEPS}.unreadable"])  # moved once, by process 0
    assert f"checkpoint step {STEPS}" in job.logs[0].read_text()
    retrained, _ = final_checkpoint(workdir)
    for key in expected:
        np.testing.assert_array_equal(retrained[key], expected[key], err_msg=key)


def test_two_processes_evaluate_and_embed_a_trained_run_like_one_process(two_process_metric_learning, tmp_path):
    from test_folder_data import write_digits

    workdir = tmp_path / "run"
    shutil.copytree(two_process_metric_learning, workdir)
    final = json.loads((workdir / "summary.json").read_text())["final"]
    metrics = ("precision_at_1", "map_at_r", "r_precision", "nmi")

    # Evaluating the last step again on the same two processes gives the run's own numbers, exactly; one process
    # with four devices embeds the same rows on the same devices, so it gives them too.
    text = launch("jaxdml.evaluate", [f"--workdir={workdir}", "--step=latest", "--name=two"], tmp_path / "two.log")
    two = json.loads((workdir / "evaluations" / "two.json").read_text())
    result = subprocess.run([sys.executable, "-m", "jaxdml.evaluate", f"--workdir={workdir}", "--step=latest",
                             "--name=one"], env=worker_env(4), capture_output=True, text=True, timeout=TIMEOUT,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((workdir / "evaluations" / "one.json").read_text())
    assert two["step"] == one["step"] == STEPS
    for name in metrics:
        assert two["metrics"][name] == final[name] == one["metrics"][name], name
    assert text.count("saved ") == 1 and "[process 1] saved" not in text  # process 0 alone writes

    # Embedding a folder: every process holds all the embeddings, process 0 writes the index; the same numbers as
    # one process, up to float32 rounding (the two programs are compiled apart; measured: 6e-8, one unit in the
    # last place, on 13 % of the entries).
    write_digits(tmp_path / "img", classes=range(5), per_class=7)  # 35 images: batches of 16 and a ragged end
    args = [f"--workdir={workdir}", f"--images={tmp_path / 'img'}", "--step=latest", "--batch_size=16",
            "--progress_bar=False"]
    text = launch("jaxdml.embed", [*args, f"--out={tmp_path / 'two.npz'}"], tmp_path / "embed.log")
    assert text.count("embedded 35 images") == 1 and "[process 1] embedded" not in text
    result = subprocess.run([sys.executable, "-m", "jaxdml.embed", *args, f"--out={tmp_path / 'one.npz'}"],
                            env=worker_env(4), capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "two.npz") as a, np.load(tmp_path / "one.npz") as b:
        assert a["embeddings"].shape == (35, 32)
        np.testing.assert_array_equal(a["paths"], b["paths"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=0, atol=1e-6)
        assert int(a["step"]) == STEPS
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["one.npz", "two.npz"]  # no temporary files left
