"""Tiny-ImageNet teacher training for the letKD pairs: ``:ARCH``, default wrn_40_2.

    python -m jaxdml.data.prepare --dataset tiny_imagenet --manual_dir DIR
    python -m jaxdml.main --config experiments/tiny_imagenet_teacher.py:wrn_40_2 \\
        --workdir runs/tiny_imagenet_teacher_wrn_40_2

Recipe: experiments/_letkd_tiny_imagenet.py without distillation. The finished workdir exports the network
the students' ``distill.teacher`` points at (runs/tiny_imagenet_teacher_ARCH). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 3, teachers):
wrn_40_2 61.26, resnet56 58.34, cifar_resnet50 68.97.
"""

from jaxdml.config import load_sibling


def get_config(arch: str = "wrn_40_2"):
    lr = 0.01 if arch in ("mobilenetv2", "shufflev1", "shufflev2") else 0.05
    return load_sibling(__file__, "_letkd_tiny_imagenet").get_config(arch, lr=lr)
