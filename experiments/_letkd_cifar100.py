"""The CIFAR-100 distillation recipe shared by experiments/letkd_cifar100_*.py and cifar100_teacher.py.

letKD paper (BMVC 2023) and the KD code base (CRD): batch 64, SGD with Nesterov momentum 0.9, weight decay
5e-4, 240 epochs, lr 0.05 (0.01 for MobileNet / ShuffleNet students) divided by 10 at epochs 150, 180 and
210; RandomCrop(32, padding 4, padding_mode='reflect') + horizontal flip, as the letKD release's
cifar_dataset.py; CIFAR-100 mean/std normalisation; weight decay on every parameter (torch's SGD over
``net.parameters()``, BatchNorm, biases and the LeTKD layer's cosine scales included: ``optim.decay_all``). Methods:
  none    cross-entropy only (the student baseline)
  kd      0.1 CE + 0.9 Hinton KD at T = 4 (CRD's -r 0.1 -a 0.9)
  fitnet  CE + 100 x hint MSE (student and teacher layer2_0 / block2_0, CRD's hint layer)
  letkd1  CE + the penultimate LeTKD layer (K = 4,096 k-means words of the teacher's last stage, T = 1)
  letkd2  letkd1 + the intermediate LeTKD layer after the first block of stage 3 (LDA to 60 dims, 8
          sub-classes per class = 800 words)
The teacher map is average-pooled to the student's size where they differ (as letKD's ``downscale``).
"""

from jaxdml.config import default_config

STEPS_PER_EPOCH = 782  # ceil(50,000 / 64)
EPOCHS = 240


def first_block_of_stage3(arch: str) -> str:
    return "block3_0" if arch.startswith("wrn_") else "layer3_0"


def hint_block(arch: str) -> str:
    return "block2_0" if arch.startswith("wrn_") else "layer2_0"


def get_config(student: str, teacher: str | None = None, method: str = "none", lr: float = 0.05):
    config = default_config()
    config.trainer = "distillation"
    config.data.name = "cifar100"
    config.data.image_size = 32
    config.data.resize_size = 32
    config.data.sampler = "shuffle"
    config.data.augment = "pad_crop"
    config.data.crop_padding = 4
    config.data.pad_mode = "reflect"  # the letKD release; data.pad_mode="zeros" for CRD's zero padding
    config.data.num_workers = 8
    config.model.backbone = student
    steps = STEPS_PER_EPOCH * EPOCHS
    config.optim.name = "sgd"
    config.optim.lr = lr
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    config.optim.decay_all = True  # torch SGD's weight_decay: every parameter
    config.optim.schedule = "step"
    config.optim.step_boundaries = tuple(STEPS_PER_EPOCH * e for e in (150, 180, 210))
    config.train.batch_size = 64
    config.train.num_steps = steps
    config.train.log_every = 200
    config.train.eval_every = STEPS_PER_EPOCH * 10
    config.train.checkpoint_every = STEPS_PER_EPOCH * 5
    config.eval.selection_metric = "accuracy"
    config.eval.clustering = False
    config.eval.at_start = False
    config.eval.batch_size = 1000
    if method == "none":
        return config
    if method not in ("kd", "fitnet", "letkd1", "letkd2"):
        raise ValueError(f"method {method!r}: use none, kd, fitnet, letkd1 or letkd2")
    d = config.distill
    d.teacher_arch = teacher
    d.teacher = f"weights/{teacher}"  # python -m jaxdml.models.convert --arch TEACHER --src ckpt.pth --out ...
    if method == "kd":
        d.method, d.ce_weight, d.kd_weight, d.kd_temperature = "kd", 0.1, 0.9, 4.0
    elif method == "fitnet":
        d.method, d.fitnet_weight = "fitnet", 100.0
        d.hint_block, d.teacher_hint_block = hint_block(student), hint_block(teacher)
    else:
        d.method = "letkd"
        d.letkd.num_words = 4096
        d.letkd.intermediate = method == "letkd2"
        d.letkd.student_block = first_block_of_stage3(student)
        d.letkd.teacher_block = first_block_of_stage3(teacher)
        d.letkd.lda_dims = 60
        d.letkd.subclasses = 8
    return config
