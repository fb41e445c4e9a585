"""GAP twin of gsp_digits_collage.py: the same network, data, loss and schedule, with global average pooling.

    python -m jaxdml.main --config experiments/gap_digits_collage.py --workdir runs/gap_digits_collage

Expected on a busy 2-core CPU: 3-6 minutes (400 steps). Test classes (720 images, 24 numbers), seeds 0/1/2:
    GAP  R@1 89.17 / 91.39 / 82.22 = 87.59 +- 4.78   MAP@R 58.76 / 63.04 / 55.65 = 59.15 +- 3.72
    GSP  R@1 91.06 +- 2.97, MAP@R 67.29 +- 4.67 (gsp_digits_collage.py; measured at commit 1dab99a)
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("gsp_digits_collage", Path(__file__).with_name("gsp_digits_collage.py"))
_gsp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gsp)


def get_config():
    config = _gsp.get_config()
    config.model.pooling = "gap"
    config.loss.zsr.weight = 0.0  # ZSR needs GSP's attributes
    return config
