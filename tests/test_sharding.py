"""The same train steps on 1 and on 8 emulated CPU devices give the same losses and parameters, for metric
learning and for distillation (both run through the one training core)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_on(devices: int, out: Path) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(HERE)}
    result = subprocess.run([sys.executable, str(HERE / "sharding_worker.py"), str(out)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return dict(np.load(out))


def test_one_and_eight_devices_agree_for_both_tasks(tmp_path):
    one, eight = run_on(1, tmp_path / "one.npz"), run_on(8, tmp_path / "eight.npz")
    assert int(one.pop("devices")) == 1 and int(eight.pop("devices")) == 8
    assert one.keys() == eight.keys()
    for task in ("metric_learning", "distillation"):
        np.testing.assert_allclose(one.pop(f"{task}/losses"), eight.pop(f"{task}/losses"), rtol=1e-5, err_msg=task)
        assert sum(k.startswith(f"{task}/") for k in one) > 10
    # Same mathematics, another float reduction order: the largest parameter difference relative to the array's
    # largest entry after three steps (measured: 7e-6 metric learning; 1.6e-2 distillation, on BatchNorm biases,
    # whose gradients are sums over 8,192 locations that nearly cancel, amplified by lr 0.05 with Nesterov).
    bound = {"metric_learning": 5e-5, "distillation": 5e-2}
    for key in one:
        scale = max(float(np.abs(one[key]).max()), 1e-6)
        assert float(np.abs(one[key] - eight[key]).max()) <= bound[key.split("/")[0]] * scale, key
