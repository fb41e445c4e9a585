"""CIFAR-100 distillation, WRN-40-2 -> ShuffleNetV1: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD, lr 0.01 for ShuffleNet students). The
teacher's maps are twice the student's, so they are 2x2-average-pooled (letKD's ``downscale``). Prepare
CIFAR-100 once (needs TensorFlow) and convert the KD code base's teacher, or train one with
experiments/cifar100_teacher.py:wrn_40_2 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch wrn_40_2 --src wrn_40_2_vanilla/ckpt_epoch_240.pth \\
        --out weights/wrn_40_2
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_wrn40_2_shv1.py --workdir runs/shv1w
    python -m jaxdml.main --config experiments/letkd_cifar100_wrn40_2_shv1.py --workdir runs/shv1w

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 1, 5 trials): teacher 75.61, student 70.50, KD 74.83, letKD-1 76.93 +- .16, letKD-2 77.08 +- .12.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("shufflev1", "wrn_40_2", method, lr=0.01)
