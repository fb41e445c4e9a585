"""GAP twin of gsp_digits_collage.py: the same network, data, loss and schedule, with global average pooling.

    python -m jaxdml.main --config experiments/gap_digits_collage.py --workdir runs/gap_digits_collage

Expected on 2 CPU cores: about 2 minutes (400 steps). Test classes (720 images, 24 numbers), seeds 0 / 1 / 2:
    GAP  R@1 85.83 / 92.92 / 86.39 = 88.38 +- 3.94   MAP@R 57.33 / 67.90 / 59.26 = 61.50 +- 5.63
    GSP  R@1 91.71 +- 1.42, MAP@R 69.71 +- 5.71 (gsp_digits_collage.py)
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
