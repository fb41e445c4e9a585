"""The poolings GSP is compared with, on digit collages (embedded data): the GAP twin's recipe with another head.

The network, data, loss and schedule of gap_digits_collage.py (small CNN, 8x8 x 128 feature map, 64-d embeddings,
contrastive loss, batches of 16 numbers x 4, 400 steps); the pooling head is the one after the colon, built as the
GSP release builds it (jaxdml/models/pooling_heads.py) with the release's settings, except where the 64-d
embedding needs another split (OTP: 8 support points of 8 dims; NetVLAD: the release's 16 centres of 4 dims):

    cbam crow delf gem gsop netvlad otp soap weldon

    python -m jaxdml.main --config experiments/pooling_digits_collage.py:gem --workdir runs/pooling_collage_gem

Expected numbers (test classes, seeds 0/1/2): not measured to the end yet; ``python benchmarks/embedded_results.py
--only collage poolings`` prints the table (with the GAP and GSP rows of gap_/gsp_digits_collage.py). A run took
6.5-9 minutes on 2 CPU cores while other work shared them (GeM, GSoP, NetVLAD at b606b52).
"""

from jaxdml.config import load_sibling
from jaxdml.models import POOLING_HEADS

POOLINGS = tuple(POOLING_HEADS)


def get_config(pooling: str = "gem"):
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    config = load_sibling(__file__, "gap_digits_collage").get_config()
    config.model.pooling = pooling
    config.model.otp.support_size = 8  # 64-d embedding = 8 transported means of 8 dims
    return config
