"""Tiny-ImageNet distillation, ResNet-56 -> ResNet-20: letKD-2 by default; ``:none|kd|fitnet|letkd1`` too.

Recipe: experiments/_letkd_tiny_imagenet.py (the CIFAR-100 schedule on 64x64, rotation + flip, alpha 1 /
1, lr 0.05). Prepare the data, train the teacher, then the student:

    python -m jaxdml.data.prepare --dataset tiny_imagenet --manual_dir DIR
    python -m jaxdml.main --config experiments/tiny_imagenet_teacher.py:resnet56 \\
        --workdir runs/tiny_imagenet_teacher_resnet56
    python -m jaxdml.main --config experiments/letkd_tiny_imagenet_rn56_rn20.py --workdir runs/tiny_rn56_rn20

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 3, 3 trials): teacher 58.34, student 52.66, KD 53.04, letKD-1 55.54, letKD-2 57.35.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    config = load_sibling(__file__, "_letkd_tiny_imagenet").get_config("resnet20", "resnet56", method, lr=0.05)
    return config
