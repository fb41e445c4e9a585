"""Tiny-ImageNet distillation, WRN-40-2 -> ShuffleNetV1: letKD-2 by default; ``:none|kd|fitnet|letkd1`` too.

Recipe: experiments/_letkd_tiny_imagenet.py (the CIFAR-100 schedule on 64x64, rotation + flip, alpha 1 /
1, lr 0.01). Prepare the data, train the teacher, then the student:

    python -m jaxdml.data.prepare --dataset tiny_imagenet --manual_dir DIR
    python -m jaxdml.main --config experiments/tiny_imagenet_teacher.py:wrn_40_2 \\
        --workdir runs/tiny_imagenet_teacher_wrn_40_2
    python -m jaxdml.main --config experiments/letkd_tiny_imagenet_wrn40_2_shv1.py --workdir runs/tiny_wrn40_2_shv1

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 3, 3 trials): teacher 61.26, student 60.52, KD 64.80, letKD-1 65.70, letKD-2 66.15.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    config = load_sibling(__file__, "_letkd_tiny_imagenet").get_config("shufflev1", "wrn_40_2", method, lr=0.01)
    return config
