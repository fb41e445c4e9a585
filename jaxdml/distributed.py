"""Many hosts: starting ``jax.distributed``, and what the rest of jaxdml asks about the job.

Every host of a job runs the same command (``python -m jaxdml.main ...``); :func:`initialize` joins them into one
JAX system before anything touches a device:

* ``--coordinator_address=host:port --num_processes=N --process_id=i`` (any launcher, e.g. ``jaxdml.launch``):
  exactly those values;
* otherwise, with ``--distributed=auto`` (the default), when the environment is a multi-process job that JAX knows
  how to read (a SLURM step with several tasks, Open MPI's ``mpirun``, a Cloud TPU VM or a GKE TPU slice),
  ``jax.distributed.initialize()`` with JAX's cluster detection; ``--distributed=on`` forces that call (other
  clusters JAX detects, e.g. Kubernetes or mpi4py), ``--distributed=off`` never makes it;
* otherwise nothing: one process alone behaves exactly as without this module.

On CPUs the processes talk through gloo (``jax_cpu_collectives_implementation``), so several processes on one
machine form one mesh; that is how the tests and ``jaxdml.launch`` try multi-host code.

Process 0 (:func:`is_primary`) alone writes files meant for people (logs, ``config.json``, summaries, exports);
checkpoints are written by orbax on all processes together.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")  # --distributed
_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips on a Cloud TPU VM


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def _has_tpu_chips() -> bool:
    """Whether this machine has Google TPU chips on its PCI bus (a Cloud TPU VM), without loading a backend."""
    for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"):
        try:
            if vendor.read_text().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def detect_cluster() -> str | None:
    """The multi-process job this process is part of, as JAX's cluster detection would find it, or None."""
    if "SLURM_JOB_ID" in os.environ and max(_int_env("SLURM_STEP_NUM_TASKS"), _int_env("SLURM_NTASKS")) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ and _int_env("OMPI_COMM_WORLD_SIZE") > 1:
        return "open_mpi"
    hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h]) > 1:
        return "gke_tpu"
    if _has_tpu_chips():
        return "cloud_tpu"
    return None


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins this process to its job (see the module docstring); returns whether ``jax.distributed`` was started.

    Call it first, before any JAX computation. Raises ``ValueError`` with the fix for inconsistent settings.
    """
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: use one of {', '.join(MODES)}.")
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id go together: give all three "
                             "(or none, to let a cluster's environment set them).")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
        if mode == "off":
            raise ValueError("--distributed=off contradicts --coordinator_address; drop one of them.")
    elif mode == "off" or (mode == "auto" and detect_cluster() is None):
        return False
    if jax.distributed.is_initialized():
        return True
    # gloo lets CPU devices of several processes compute together; the setting does not affect GPUs or TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    log.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
             jax.local_device_count())
    return True


def is_primary() -> bool:
    """Whether this is process 0, the one that writes files meant for people."""
    return jax.process_index() == 0


def multi_process() -> bool:
    return jax.process_count() > 1


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (nothing to wait for with one process)."""
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: bool) -> bool:
    """Whether ``value`` holds on any process (every process gets the same answer)."""
    if not multi_process():
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(value)))))


def gather(values: jax.Array) -> np.ndarray:
    """The whole of ``values`` (sharded over the devices of every process) as one NumPy array on every process."""
    if multi_process():
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(values, tiled=True))
    return np.asarray(jax.device_get(values))


def preemption_point(step: int) -> bool:
    """True, on every process at the same ``step``, once any process of a multi-process job has received
    SIGTERM (JAX's preemption notice); always False for one process, whose signals the loop handles itself."""
    if not multi_process():
        return False
    from jax.experimental import multihost_utils

    return multihost_utils.reached_preemption_sync_point(step)
