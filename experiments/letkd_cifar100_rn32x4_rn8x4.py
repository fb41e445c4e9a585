"""CIFAR-100 distillation, ResNet-32x4 -> ResNet-8x4: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``resnet32x4_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:resnet32x4 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet32x4 --src resnet32x4_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet32x4
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn32x4_rn8x4.py --workdir runs/rn32x4_rn8x4
    python -m jaxdml.main --config experiments/letkd_cifar100_rn32x4_rn8x4.py --workdir runs/rn32x4_rn8x4

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 79.42, student 72.50, KD 73.33, letKD-1 76.70 +- .06, letKD-2 77.09 +- .18.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("resnet8x4", "resnet32x4", method)
