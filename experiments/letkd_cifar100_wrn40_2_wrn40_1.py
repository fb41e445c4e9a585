"""CIFAR-100 distillation, WRN-40-2 -> WRN-40-1: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``wrn_40_2_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:wrn_40_2 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch wrn_40_2 --src wrn_40_2_vanilla/ckpt_epoch_240.pth \\
        --out weights/wrn_40_2
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_wrn40_2_wrn40_1.py --workdir runs/wrn40_1
    python -m jaxdml.main --config experiments/letkd_cifar100_wrn40_2_wrn40_1.py --workdir runs/wrn40_1

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 75.61, student 71.98, KD 73.54, letKD-1 75.01 +- .09, letKD-2 75.19 +- .13.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    return load_sibling(__file__, "_letkd_cifar100").get_config("wrn_40_1", "wrn_40_2", method)
