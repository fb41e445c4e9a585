"""XBML on digit collages (embedded data): GAP with a cross-batch prototype loss, against its GAP twin.

The network, data, base loss and schedule of gap_digits_collage.py (small CNN, 8x8 feature map, 64-d embeddings,
contrastive loss, batches of 16 numbers x 4, 400 steps); the head is XBML's (model.pooling='xbml': GAP plus the
convex coefficients of the 64 locations over K = 32 prototypes, softmax scale 10) and the objective is
0.9 * contrastive + 0.1 * XBML (jaxdml/losses/xbml.py) in the reading after the colon: r1 (ZSR on the
coefficients, code-backed) or r2 (prototypes fitted to one half re-express the other; the abstract's wording).
At test time the embedding is GAP of the projection, as the twin's.

    python -m jaxdml.main --config experiments/xbml_digits_collage.py:r1 --workdir runs/xbml_digits_collage_r1

Expected on 2 CPU cores: about 4 minutes (400 steps). Test classes (720 images, 24 numbers), seeds 0/1/2: see
the README ("XBML"), printed by python benchmarks/embedded_results.py --only xbml.
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
