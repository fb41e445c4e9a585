"""The exact kNN and retrieval metrics sharded over 8 emulated CPU devices (one process) and over 2 processes of 4
devices: the same neighbours, bit-identical distances and identical metrics as one device, and as brute force.

The cases run in tests/retrieval_worker.py (the device count is fixed at JAX start-up): data with exact ties across
device slices (integer grids, duplicated vectors), row counts not divisible by 8, fewer rows than devices, k = every
reference row, Recall@K far beyond max R (the rank pass), lone queries, invalid rows holding NaN, jax.Arrays
sharded over the devices (also not fully addressable) against numpy input. Two deliberately broken kernels (devices
merged in reverse order; the rank pass keeping the highest tied index) must be caught by the same comparisons.
"""

import json
import socket
import subprocess
from pathlib import Path

import pytest
from train_helpers import start_worker


def _start(out: Path, devices: int, *args: str) -> subprocess.Popen:
    return start_worker("retrieval_worker.py", devices, str(out), *args)


def _report(process: subprocess.Popen, out: Path) -> dict:
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    assert process.returncode == 0, stderr[-5000:]
    return json.loads(out.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    """Runs the one-process worker and the two-process worker side by side, once for the module."""
    tmp = tmp_path_factory.mktemp("retrieval_sharded")
    port = str(_free_port())
    runs = {"single": (_start(tmp / "single.json", 8), tmp / "single.json")}
    runs.update({f"process{i}": (_start(tmp / f"p{i}.json", 4, str(i), port), tmp / f"p{i}.json") for i in (0, 1)})
    return {name: _report(*run) for name, run in runs.items()}


def _assert_group(report: dict, group: str, count: int) -> None:
    assert report["checked"].get(group) == count, (group, report["checked"])  # every case ran
    assert not report["failures"].get(group), (group, report["failures"][group])


def test_eight_devices_give_the_one_device_neighbours_and_metrics(reports):
    _assert_group(reports["single"], "knn: 8 devices = 1 device", 7)
    _assert_group(reports["single"], "metrics: 8 devices = 1 device", 5)


def test_eight_devices_match_brute_force(reports):
    _assert_group(reports["single"], "knn: = brute force", 10)
    _assert_group(reports["single"], "metrics: = brute force", 4)


def test_invalid_rows_are_as_if_absent(reports):
    _assert_group(reports["single"], "masks: = rows absent", 4)


def test_sharded_jax_arrays_give_the_numpy_results(reports):
    _assert_group(reports["single"], "sharded input: metrics = numpy on 1 device", 3)
    _assert_group(reports["single"], "sharded input: knn = numpy on 1 device", 5)
    _assert_group(reports["single"], "sharded input: validation", 8)


def test_broken_merges_are_caught(reports):
    _assert_group(reports["single"], "mutants are caught", 3)
    stats = reports["single"]["stats"]
    # The data decide: the opposite tie-break changes every brute-force case's metrics, and the rank pass has work.
    ties = {k: v for k, v in stats.items() if k.startswith("tie order")}
    ranks = {k: v for k, v in stats.items() if k.startswith("rank-pass")}
    assert len(ties) == 4 and min(ties.values()) > 0.01, ties
    assert len(ranks) == 4 and min(ranks.values()) > 10, ranks


@pytest.mark.parametrize("process", ["process0", "process1"])
def test_two_processes_with_arrays_no_process_holds(reports, process):
    report = reports[process]
    for group, count in [("multi-process: inputs are not fully addressable", 1),
                         ("multi-process: knn = numpy on 1 device", 2),
                         ("multi-process: metrics = numpy on 1 device", 1),
                         ("multi-process: metrics = brute force", 1),
                         ("multi-process: validation", 2)]:
        _assert_group(report, group, count)
