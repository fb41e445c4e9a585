"""CIFAR-100 distillation, ResNet-50 -> MobileNetV2: letKD-2 by default; ``:none|kd|fitnet|letkd1`` too.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD, lr 0.01 for the MobileNetV2 student), with
the paper's residual weights for this pair: alpha 0.1 (penultimate) and 0.2 (intermediate). The intermediate
layer sits where the release (cross_model/RN50_MNv2/letKD-2.py, tools.split_network) puts it: after the student's
blocks[5], the whole 80-channel stage (our blocks5_2, 2x2), reading the teacher's layer4[0] (4x4, average-pooled
to 2x2); the teacher's last stage (4x4) is pooled to the student's 2x2 as well. Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's ResNet50 teacher, or train one with
experiments/cifar100_teacher.py:cifar_resnet50:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch cifar_resnet50 --src ResNet50_vanilla/ckpt_epoch_240.pth \\
        --out weights/cifar_resnet50
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn50_mnv2.py --workdir runs/mnv2
    python -m jaxdml.main --config experiments/letkd_cifar100_rn50_mnv2.py --workdir runs/mnv2

Expected run time: not measured (no GPU on the development machines). Expected top-1 (letKD paper, supp.
Table 1, 5 trials): teacher 79.34, student 64.60, KD 67.35, letKD-1 69.97 +- .18, letKD-2 70.39 +- .23.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd2"):
    config = load_sibling(__file__, "_letkd_cifar100").get_config("mobilenetv2", "cifar_resnet50", method, lr=0.01)
    config.distill.letkd.penultimate_alpha = 0.1
    config.distill.letkd.intermediate_alpha = 0.2
    config.distill.letkd.student_block = "blocks5_2"  # the release's blocks[5]: the end of the 80-channel stage
    config.distill.letkd.teacher_block = "layer4_0"
    config.distill.hint_block = "blocks2_0"  # FitNet: 8x8 student map regressed onto the teacher's layer2_0 (16x16)
    return config
