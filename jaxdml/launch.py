"""Several processes of one job on this machine: a way to try multi-host training without a cluster.

    python -m jaxdml.launch --num_processes 2 -- --config experiments/digit_pairs.py --workdir runs/two_processes

starts ``python -m jaxdml.main <arguments after -->`` once per process, each with ``--coordinator_address``
(127.0.0.1 and a free port), ``--num_processes`` and ``--process_id``, on ``--devices_per_process`` CPU devices
(``JAX_PLATFORMS=cpu``; the processes compute together through gloo, as the hosts of a pod do through their
interconnect). Process 0 prints as usual; the other processes' lines are prefixed with ``[process i]``.

``--module jaxdml.evaluate``, ``jaxdml.embed`` or ``jaxdml.probe`` starts that command instead (its own flags
after ``--``): a trained run is evaluated, embedded or probed by all the processes together, each device taking
its share of the batches, and process 0 writes the result, as on a pod.

SIGINT or SIGTERM to the launcher is passed to every process once: they stop together at the same step after
saving a checkpoint, and rerunning the same command resumes. If a process fails, the others are stopped after
``--grace`` seconds; if the launcher itself is killed, so are they (Linux). The exit status is the first failing
process's (0 when all succeed).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

MODULES = ("jaxdml.main", "jaxdml.evaluate", "jaxdml.embed", "jaxdml.probe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefix_lines(stream: IO[str], prefix: str, out: IO[str]) -> None:
    for line in stream:
        out.write(prefix + line)
        out.flush()


def _die_with_parent() -> None:
    """On Linux the process is killed when the launcher dies (even by SIGKILL): no process outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m jaxdml.launch", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --num_processes N [options] -- <arguments of jaxdml.main>")
    parser.add_argument("--num_processes", type=int, required=True, help="processes to start (>= 1)")
    parser.add_argument("--devices_per_process", type=int, default=1, help="emulated CPU devices of each process")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds the others get after one process fails")
    parser.add_argument("--module", default="jaxdml.main", choices=MODULES,
                        help="the command each process runs: training, or evaluating / embedding / probing a "
                        "trained run")
    if "--" not in argv:
        parser.error("put the arguments of jaxdml.main after --, e.g. -- --config experiments/digit_pairs.py "
                     "--workdir runs/x")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be at least 1")
    rest = argv[split + 1:]
    clash = [a for a in rest if a.split("=")[0] in ("--coordinator_address", "--num_processes", "--process_id")]
    if clash:
        parser.error(f"{clash[0].split('=')[0]} is set by the launcher; remove it after --")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    port = args.port or free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={args.devices_per_process}".strip()}
    processes: list[subprocess.Popen] = []
    threads = []
    for i in range(args.num_processes):
        command = [sys.executable, "-m", args.module, *rest, f"--coordinator_address=127.0.0.1:{port}",
                   f"--num_processes={args.num_processes}", f"--process_id={i}"]
        pipe = None if i == 0 else subprocess.PIPE
        # Own sessions: a Ctrl-C reaches the launcher only, which passes it on exactly once.
        process = subprocess.Popen(command, env=env, stdout=pipe, stderr=subprocess.STDOUT if pipe else None,
                                   text=True, start_new_session=True, preexec_fn=_die_with_parent)
        processes.append(process)
        if pipe:
            thread = threading.Thread(target=_prefix_lines, args=(process.stdout, f"[process {i}] ", sys.stderr),
                                      daemon=True)
            thread.start()
            threads.append(thread)

    def forward(signum: int, frame: object) -> None:
        del frame
        for p in processes:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    failed_at: float | None = None
    try:
        while any(p.poll() is None for p in processes):
            for p in processes:
                code = p.poll()
                if code not in (None, 0) and status == 0:
                    status, failed_at = code, time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > args.grace:
                for p in processes:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
        for p in processes:
            if p.returncode and status == 0:
                status = p.returncode
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in processes:
            if p.poll() is None:
                p.kill()
        for thread in threads:
            thread.join(timeout=5)
    return status if status >= 0 else 128 - status  # killed by a signal: 128 + its number, as a shell reports


if __name__ == "__main__":
    sys.exit(main())
