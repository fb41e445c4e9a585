"""The same train step on 1 and on 8 emulated CPU devices gives the same loss and parameters."""

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


def test_one_and_eight_devices_agree(tmp_path):
    one, eight = run_on(1, tmp_path / "one.npz"), run_on(8, tmp_path / "eight.npz")
    assert int(one.pop("devices")) == 1 and int(eight.pop("devices")) == 8
    np.testing.assert_allclose(one.pop("losses"), eight.pop("losses"), rtol=1e-5)
    assert one.keys() == eight.keys() and len(one) > 10
    for key in one:
        np.testing.assert_allclose(one[key], eight[key], rtol=2e-4, atol=2e-5, err_msg=key)
