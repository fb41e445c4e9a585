"""CIFAR-100 distillation, ResNet-32x4 -> ShuffleNetV2: letKD-2 by default; ``:none|kd|fitnet|letkd1`` too.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD, lr 0.01 for ShuffleNet students). The
teacher's maps are twice the student's, so they are 2x2-average-pooled (letKD's ``downscale``). Prepare
CIFAR-100 once (needs TensorFlow) and convert the KD code base's teacher, or train one with
experiments/cifar100_teacher.py:resnet32x4 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet32x4 --src resnet32x4_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet32x4
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn32x4_shv2.py --workdir runs/shv2
    python -m jaxdml.main --config experiments/letkd_cifar100_rn32x4_shv2.py --workdir runs/shv2

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 1, 5 trials): teacher 79.42, student 71.82, KD 74.45, letKD-1 77.75 +- .17, letKD-2 77.95 +- .06.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("shufflev2", "resnet32x4", method, lr=0.01)
