"""Shared settings of the embedded distillation demo (experiments/kd_digits_*.py): 100-way classification of
the two-digit numbers 00-99 at 16x16, test images in unseen handwriting (jaxdml/data/digits.py)."""

from jaxdml.config import default_config


def get_config(arch: str, num_steps: int):
    config = default_config()
    config.trainer = "distillation"
    config.data.name = "digit_numbers"
    config.data.image_size = 16
    config.data.resize_size = 16
    config.data.sampler = "shuffle"
    config.data.augment = "pad_crop"
    config.data.crop_padding = 2
    config.data.flip = False  # mirrored digits are not digits
    config.model.backbone = arch
    config.optim.name = "sgd"
    config.optim.lr = 0.05
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"  # / 10 at 62.5%, 75% and 87.5% of training (150/180/210 of 240 epochs)
    config.optim.step_boundaries = tuple(int(num_steps * f) for f in (0.625, 0.75, 0.875))
    config.train.batch_size = 64
    config.train.num_steps = num_steps
    config.train.log_every = 50
    config.train.eval_every = num_steps
    config.train.checkpoint_every = num_steps // 2
    config.eval.selection_metric = "accuracy"
    config.eval.at_start = False
    config.eval.clustering = False
    return config
