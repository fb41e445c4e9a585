"""Tiny-ImageNet distillation, ResNet-50 -> MobileNetV2: letKD-2 by default; ``:none|kd|fitnet|letkd1`` too.

Recipe: experiments/_letkd_tiny_imagenet.py (the CIFAR-100 schedule on 64x64, rotation + flip, alpha 0.5 /
1, lr 0.01); the intermediate layer after the student's blocks[5] (blocks5_2), reading the teacher's layer4[0],
as the release places it for this pair. Prepare the data, train the teacher, then the student:

    python -m jaxdml.data.prepare --dataset tiny_imagenet --manual_dir DIR
    python -m jaxdml.main --config experiments/tiny_imagenet_teacher.py:cifar_resnet50 \\
        --workdir runs/tiny_imagenet_teacher_cifar_resnet50
    python -m jaxdml.main --config experiments/letkd_tiny_imagenet_rn50_mnv2.py --workdir runs/tiny_rn50_mnv2

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 3, 3 trials): teacher 68.97, student 58.35, KD 58.68, letKD-1 60.69, letKD-2 61.15.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    config = load_sibling(__file__, "_letkd_tiny_imagenet").get_config("mobilenetv2", "cifar_resnet50", method, lr=0.01)
    config.distill.letkd.student_block = "blocks5_2"  # as the CIFAR-100 pair: the release's blocks[5] ...
    config.distill.letkd.teacher_block = "layer4_0"  # ... reading the teacher's layer4[0]
    config.distill.hint_block = "blocks2_0"
    config.distill.letkd.penultimate_alpha = 0.5  # supp. §1.2: this pair only, on Tiny-ImageNet
    config.distill.letkd.intermediate_alpha = 1.0
    return config
