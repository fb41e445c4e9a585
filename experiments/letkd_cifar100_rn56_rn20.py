"""CIFAR-100 distillation, ResNet-56 -> ResNet-20: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``resnet56_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:resnet56 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet56 --src resnet56_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet56
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn56_rn20.py --workdir runs/rn56_rn20
    python -m jaxdml.main --config experiments/letkd_cifar100_rn56_rn20.py --workdir runs/rn56_rn20

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 72.34, student 69.06, KD 70.66, letKD-1 72.44 +- .24, letKD-2 73.27 +- .16.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("resnet20", "resnet56", method)
