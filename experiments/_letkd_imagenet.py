"""The ImageNet distillation recipe (letKD supp. §2.2, Table 2) shared by experiments/letkd_imagenet_*.py.

Supplement: SGD with Nesterov momentum 0.9, 100 epochs, lr 0.1 divided by 10 at epochs 30, 60 and 90; the
torchvision transforms of the release's imagenet_dataset.py (RandomResizedCrop(224) + flip; Resize(256) +
CenterCrop(224)), ImageNet mean/std; (alpha_inter, alpha_penult) = (1, 1). Not stated by the paper and taken from
the common ImageNet KD setting (torchvision's reference / CRD): batch 256, weight decay 1e-4. The release has no
ImageNet experiment configs, so the intermediate layer sits after the first block of stage 3 (14x14), as on CIFAR.
Data: TFDS ``imagenet2012`` (manual download). Teachers: torchvision's ImageNet weights, converted with
``python -m jaxdml.models.convert`` (or a torchvision ``.pth`` given directly as distill.teacher).
"""

from jaxdml.config import default_config

TRAIN_IMAGES = 1_281_167
BATCH = 256
STEPS_PER_EPOCH = -(-TRAIN_IMAGES // BATCH)  # 5,005
EPOCHS = 100
METHODS = ("none", "kd", "fitnet", "letkd1", "letkd2")


def get_config(student: str, teacher: str, method: str, blocks: dict[str, tuple[str, str]]):
    """``blocks``: {"hint": (student, teacher), "inter": (student, teacher)} block names for FitNet and letKD-2."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    config = default_config()
    config.trainer = "distillation"
    config.data.name = "imagenet2012"
    config.data.image_size = 224
    config.data.resize_size = 256
    config.data.sampler = "shuffle"
    config.data.augment = "random_resized_crop"
    config.data.crop_area = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
    config.data.crop_aspect = (3 / 4, 4 / 3)
    config.data.flip = True
    config.data.num_workers = 16
    config.model.backbone = student
    config.optim.name = "sgd"
    config.optim.lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 1e-4
    config.optim.decay_all = True  # torch SGD's weight_decay: every parameter
    config.optim.schedule = "step"
    config.optim.step_boundaries = tuple(STEPS_PER_EPOCH * e for e in (30, 60, 90))
    config.train.batch_size = BATCH
    config.train.num_steps = STEPS_PER_EPOCH * EPOCHS
    config.train.log_every = 500
    config.train.eval_every = STEPS_PER_EPOCH * 5
    config.train.checkpoint_every = STEPS_PER_EPOCH
    config.eval.selection_metric = "accuracy"
    config.eval.clustering = False
    config.eval.at_start = False
    config.eval.batch_size = 250
    if method == "none":
        return config
    d = config.distill
    d.teacher_arch = teacher
    d.teacher = f"weights/{teacher}"  # python -m jaxdml.models.convert --arch TEACHER --src X.pth --out ...
    if method == "kd":
        d.method, d.ce_weight, d.kd_weight, d.kd_temperature = "kd", 0.1, 0.9, 4.0
    elif method == "fitnet":
        d.method, d.fitnet_weight = "fitnet", 100.0
        d.hint_block, d.teacher_hint_block = blocks["hint"]
    else:
        d.method = "letkd"
        d.letkd.num_words = 4096
        d.letkd.penultimate_alpha = d.letkd.intermediate_alpha = 1.0
        d.letkd.intermediate = method == "letkd2"
        d.letkd.student_block, d.letkd.teacher_block = blocks["inter"]
        d.letkd.lda_dims = 60
        d.letkd.subclasses = 8  # 8,000 sub-classes: the score matrix is 8,000 x 8,000
    return config
