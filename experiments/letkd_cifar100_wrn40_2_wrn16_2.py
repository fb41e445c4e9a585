"""CIFAR-100 distillation, WRN-40-2 -> WRN-16-2: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``wrn_40_2_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:wrn_40_2 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch wrn_40_2 --src wrn_40_2_vanilla/ckpt_epoch_240.pth \\
        --out weights/wrn_40_2
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_wrn40_2_wrn16_2.py --workdir runs/wrn16_2
    python -m jaxdml.main --config experiments/letkd_cifar100_wrn40_2_wrn16_2.py --workdir runs/wrn16_2

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 75.61, student 73.26, KD 74.92, letKD-1 76.29 +- .15, letKD-2 76.56 +- .22.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("wrn_16_2", "wrn_40_2", method)
