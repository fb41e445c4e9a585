"""CIFAR-100 teacher training (the KD code base's "vanilla" teachers): ``:ARCH``, default resnet56.

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.main --config experiments/cifar100_teacher.py:resnet56 --workdir runs/teacher_resnet56

Recipe: experiments/_letkd_cifar100.py without distillation (240 epochs, batch 64, SGD 0.05, 0.01 for
MobileNet/ShuffleNet, decay on every parameter), with the KD code base's zero padding for the random crops. The
finished workdir holds ``export/``, which ``distill.teacher`` accepts. Expected run time: not measured (no GPU on
the development machines). Expected top-1 (the KD code base's teachers, as the letKD paper lists them): resnet56
72.34, resnet110 74.31, resnet32x4 79.42, wrn_40_2 75.61.
"""

from jaxdml.config import load_sibling


def get_config(arch: str = "resnet56"):
    config = load_sibling(__file__, "_letkd_cifar100").get_config(arch)
    config.data.pad_mode = "zeros"  # the KD code base (CRD) trained its teachers with zero padding
    return config
