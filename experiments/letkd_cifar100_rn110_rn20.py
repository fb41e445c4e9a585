"""CIFAR-100 distillation, ResNet-110 -> ResNet-20: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``resnet110_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:resnet110 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet110 --src resnet110_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet110
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn110_rn20.py --workdir runs/rn110_rn20
    python -m jaxdml.main --config experiments/letkd_cifar100_rn110_rn20.py --workdir runs/rn110_rn20

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 74.31, student 69.06, KD 70.67, letKD-1 72.68 +- .31, letKD-2 73.38 +- .14.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("resnet20", "resnet110", method)
