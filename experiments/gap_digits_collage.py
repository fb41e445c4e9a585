"""GAP twin of gsp_digits_collage.py: the same network, data, loss and schedule, with global average pooling.

    python -m jaxdml.main --config experiments/gap_digits_collage.py --workdir runs/gap_digits_collage

Expected on 2 CPU cores: 3-4.5 minutes (400 steps). Test classes (720 images, 24 numbers), seeds 0/1/2:
    GAP  R@1 90.00 / 78.19 / 83.19 = 83.80 +- 5.93   MAP@R 63.50 / 48.84 / 58.74 = 57.03 +- 7.48
    GSP  R@1 91.90 +- 2.33, MAP@R 69.97 +- 5.66 (gsp_digits_collage.py; both measured at commit db51694)
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
