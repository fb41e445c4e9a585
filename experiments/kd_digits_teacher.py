"""Embedded distillation demo, step 1: the teacher, a CIFAR ResNet-20 on the 100 two-digit numbers (16x16).

    python -m jaxdml.main --config experiments/kd_digits_teacher.py --workdir runs/kd_digits/teacher

Writes runs/kd_digits/teacher/export (the network the students distil from). ``python -m jaxdml.distill.demo``
runs this and the three students (experiments/kd_digits_student.py) in one go. Expected run time and
accuracy: see the README (measured on 2 CPU cores).
"""

from jaxdml.config import load_sibling


def get_config():
    return load_sibling(__file__, "_kd_digits").get_config("resnet20", num_steps=600)
