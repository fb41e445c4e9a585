"""XBML on digit collages (embedded data): GAP with a cross-batch prototype loss, against its GAP twin.

The network, data, base loss and schedule of gap_digits_collage.py (small CNN, 8x8 feature map, 64-d embeddings,
contrastive loss, batches of 16 numbers x 4, 400 steps); the head is XBML's (model.pooling='xbml': GAP plus the
convex coefficients of the 64 locations over K = 32 prototypes, softmax scale 10) and the objective is
0.9 * contrastive + 0.1 * XBML (jaxdml/losses/xbml.py) in the reading after the colon: r1 (ZSR on the
coefficients, code-backed) or r2 (prototypes fitted to one half re-express the other; the abstract's wording).
At test time the embedding is GAP of the projection, as the twin's.

    python -m jaxdml.main --config experiments/xbml_digits_collage.py:r1 --workdir runs/xbml_digits_collage_r1

Expected on 2 CPU cores: 4-5 minutes (400 steps). Test classes (720 images, 24 numbers), seeds 0/1/2:
    XBML r1  R@1 72.22 / 61.11 / 76.94 = 70.09 +- 8.13   MAP@R 39.82 / 34.03 / 46.81 = 40.22 +- 6.40
    XBML r2  R@1 83.33 / 73.89 / 80.00 = 79.07 +- 4.79   MAP@R 51.21 / 46.90 / 51.89 = 50.00 +- 2.71
    GAP      R@1 90.00 / 78.19 / 83.19 = 83.80 +- 5.93   MAP@R 63.50 / 48.84 / 58.74 = 57.03 +- 7.48  (twin)
(python benchmarks/embedded_results.py --only xbml at commit 03a1cfa). With these untuned settings (the GSP
release's K, scale, weight and ridge) both readings are behind GAP on every seed.
"""

from jaxdml.config import load_sibling

READINGS = ("r1", "r2")


def get_config(reading: str = "r1"):
    if reading not in READINGS:
        raise ValueError(f"unknown reading {reading!r}; choose one of {', '.join(READINGS)}")
    config = load_sibling(__file__, "gap_digits_collage").get_config()
    config.model.pooling = "xbml"
    config.model.xbml.num_prototypes = 32
    config.model.xbml.softmax_scale = 10.0
    config.loss.xbml.weight = 0.1
    config.loss.xbml.reading = reading
    return config
