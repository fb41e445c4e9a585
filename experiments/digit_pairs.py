"""Embedded default: contrastive loss on two-digit numbers written with scikit-learn's handwritten digits.

A small CNN (64-d embeddings, GAP) learns on 50 of the numbers 00-99 with M-per-class batches (16 classes x
4 images, 32x32) and is evaluated on the other 50 numbers, written with handwriting it never saw
(jaxdml/data/digits.py). Retrieval metrics are printed before and after training. No download needed.

    python -m jaxdml.main --config experiments/digit_pairs.py --workdir runs/digit_pairs

Expected on 2 CPU cores: about 4 minutes (400 steps). Held-out numbers (1,500 images, 50 classes), seed 0
(seeds 0-2: mean +- std), measured at commit d9073a8 by `python benchmarks/embedded_results.py --only digit_pairs`:
    untrained   P@1 37.60 (40.49 +- 3.08)  MAP@R  7.26 (7.66 +- 0.38)  R-precision 16.18 (16.61 +- 0.41)
    trained     P@1 98.20 (98.51 +- 0.34)  MAP@R 89.63 (90.71 +- 1.11)  R-precision 91.09 (91.96 +- 0.86)
"""

from jaxdml.config import default_config


def get_config():
    config = default_config()
    config.data.name = "digit_pairs"
    config.data.image_size = 32
    config.data.resize_size = 32
    config.data.crop_area = (0.6, 1.0)
    config.data.flip = False  # mirrored digits are not digits
    config.data.samples_per_class = 4
    config.model.backbone = "small_cnn"
    config.model.width = 32
    config.model.embedding_dim = 64
    config.loss.name = "contrastive"
    config.loss.kwargs.pos_margin = 0.0
    config.loss.kwargs.neg_margin = 1.0
    config.optim.name = "adam"
    config.optim.lr = 1e-3
    config.optim.schedule = "cosine"
    config.train.batch_size = 64
    config.train.num_steps = 400
    config.train.log_every = 50
    config.train.eval_every = 100
    config.train.checkpoint_every = 200
    config.eval.batch_size = 256
    return config
