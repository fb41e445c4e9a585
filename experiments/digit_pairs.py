"""Embedded default: contrastive loss on scikit-learn's handwritten digits, tested on unseen digits.

Trains a small CNN (128-d embeddings, GAP) on digits 0-4 with M-per-class batches (5 classes x 8) and
evaluates retrieval on the held-out digits 5-9, before and after training. No download needed.

    python -m jaxdml.main --config experiments/digits.py --workdir runs/digits

Expected on 2 CPU cores: about TODO minutes. Held-out digits 5-9 (TODO):
    untrained  P@1 TODO  MAP@R TODO
    trained    P@1 TODO  MAP@R TODO
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
