"""GAP twin of gsp_digits_collage.py: the same network, data, loss and schedule, with global average pooling.

    python -m jaxdml.main --config experiments/gap_digits_collage.py --workdir runs/gap_digits_collage

Expected on 2 CPU cores: TODO. Test classes, seeds 0-2, mean +- std: TODO.
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
