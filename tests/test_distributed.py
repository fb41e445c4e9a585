"""Start-up of multi-process jobs: which environments count as one, and the flags' checks (no process is started
here; tests/test_multihost.py runs real ones)."""

import subprocess
import sys

import pytest

from jaxdml import distributed
from jaxdml.launch import parse_args

CLUSTER_VARIABLES = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "OMPI_MCA_orte_hnp_uri",
                     "OMPI_COMM_WORLD_SIZE", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def clean_env(monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_has_tpu_chips", lambda: False)
    return monkeypatch


@pytest.mark.parametrize(("variables", "expected"), [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # one task: one process, nothing to join
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "2"}, "slurm"),
    ({"SLURM_NTASKS": "4"}, None),  # not inside a job
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"}, "open_mpi"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, "gke_tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t-0"}, None),
])
def test_the_environments_that_start_a_job(clean_env, variables, expected):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    assert distributed.detect_cluster() == expected


def test_a_cloud_tpu_vm_is_recognised_by_its_chips(clean_env):
    clean_env.setattr(distributed, "_has_tpu_chips", lambda: True)
    assert distributed.detect_cluster() == "cloud_tpu"


def test_without_a_job_nothing_is_started(clean_env):
    assert distributed.initialize("auto") is False
    assert distributed.initialize("off") is False
    assert not distributed.multi_process() and distributed.is_primary()
    assert distributed.preemption_point(3) is False and distributed.agree(True) is True
    distributed.barrier("nothing to wait for")


@pytest.mark.parametrize(("args", "message"), [
    (("auto", "127.0.0.1:1234", None, None), "go together"),
    (("auto", None, 2, None), "go together"),
    (("auto", "127.0.0.1:1234", 2, 2), r"--process_id=2 must be in \[0, --num_processes=2\)"),
    (("off", "127.0.0.1:1234", 2, 0), "contradicts"),
    (("sometimes", None, None, None), "use one of auto, on, off"),
])
def test_inconsistent_settings_are_refused_before_anything_starts(clean_env, args, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(*args)


def test_the_entry_point_reports_bad_flags_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdml.main", "--config", "experiments/digit_pairs.py",
                             "--workdir", str(tmp_path / "run"), "--num_processes=2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --coordinator_address, --num_processes and "
                                                              "--process_id go together")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--num_processes", "2", "--config", "x"], "put the arguments of jaxdml.main after --"),
    (["--num_processes", "0", "--", "--config", "x"], "at least 1"),
    (["--num_processes", "2", "--", "--process_id=1"], "--process_id is set by the launcher"),
    (["--num_processes", "2", "--module", "jaxdml.search", "--", "--workdir", "x"], "invalid choice: 'jaxdml.search'"),
])
def test_the_launcher_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_launcher_passes_the_rest_on():
    args, rest = parse_args(["--num_processes", "3", "--devices_per_process", "2", "--", "--config", "c.py"])
    assert (args.num_processes, args.devices_per_process, rest) == (3, 2, ["--config", "c.py"])
    assert args.module == "jaxdml.main"
    assert parse_args(["--num_processes", "2", "--module", "jaxdml.embed", "--", "--out=e.npz"])[0].module == (
        "jaxdml.embed")
