"""The poolings GSP is compared with, on digit collages (embedded data): the GAP twin's recipe with another head.

The network, data, loss and schedule of gap_digits_collage.py (small CNN, 8x8 x 128 feature map, 64-d embeddings,
contrastive loss, batches of 16 numbers x 4, 400 steps); the pooling head is the one after the colon, built as the
GSP release builds it (jaxdml/models/pooling_heads.py) with the release's settings, except where the 64-d
embedding needs another split (OTP: 8 support points of 8 dims; NetVLAD: the release's 16 centres of 4 dims):

    cbam crow delf gem gsop netvlad otp soap weldon

    python -m jaxdml.main --config experiments/pooling_digits_collage.py:gem --workdir runs/pooling_collage_gem

Expected numbers (test classes, seeds 0/1/2, mean +- std; ``python benchmarks/embedded_results.py --only collage
poolings`` at commit 8f9cbf1, which prints the README table with the GAP and GSP rows of gap_/gsp_digits_collage.py):

    pooling   R@1             MAP@R           per seed R@1            per seed MAP@R
    cbam      81.48 +- 5.84   54.38 +- 5.47   87.22 / 81.67 / 75.56   60.66 / 51.85 / 50.62
    crow      93.19 +- 1.32   72.40 +- 5.48   94.44 / 93.33 / 91.81   78.73 / 69.27 / 69.21
    delf      93.52 +- 2.45   72.81 +- 9.17   95.14 / 94.72 / 90.69   79.94 / 76.02 / 62.46
    gem       96.76 +- 0.81   82.28 +- 1.47   97.08 / 97.36 / 95.83   82.54 / 83.61 / 80.70
    gsop      68.89 +- 3.78   38.46 +- 6.14   64.86 / 69.44 / 72.36   31.43 / 41.18 / 42.78
    netvlad   54.12 +- 1.49   32.18 +- 2.90   54.44 / 52.50 / 55.42   32.44 / 34.94 / 29.16
    otp       81.99 +- 7.78   54.70 +- 9.35   90.69 / 79.58 / 75.69   65.34 / 47.79 / 50.96
    soap      79.54 +- 1.90   52.04 +- 2.93   77.36 / 80.42 / 80.83   49.64 / 51.17 / 55.31
    weldon    95.83 +- 0.37   76.86 +- 1.35   95.69 / 96.25 / 95.56   76.08 / 78.42 / 76.09
    (GAP 83.80 / 57.03, GSP + 0.1 ZSR 91.90 / 69.97: gap_/gsp_digits_collage.py)

Expected run time: 6.5-17 minutes per run on 2 CPU cores with two runs sharing them (``--jobs 2``).
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
