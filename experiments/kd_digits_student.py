"""Embedded distillation demo, step 2: a ResNet-8 student trained plain, with Hinton KD or with LeTKD.

    python -m jaxdml.main --config experiments/kd_digits_student.py:letkd --workdir runs/kd_digits/letkd \\
        --config.distill.teacher=runs/kd_digits/teacher

The argument after ``:`` is ``none`` (cross-entropy only), ``kd`` (0.1 CE + 0.9 KD at T = 4, the KD code
base's setting), ``letkd`` (CE + the penultimate LeTKD layer over a 64-word teacher codebook + the
intermediate layer with LDA to 60 dims and 8 sub-classes per class) or ``template`` (no teacher: the
template-matching block after the first block of stage 3, two templates per class, supervised by the labels
at every location). The teacher comes from
experiments/kd_digits_teacher.py. ``python -m jaxdml.distill.demo`` runs all of it; expected numbers: README.
"""

from jaxdml.config import load_sibling


def get_config(method: str = "letkd"):
    config = load_sibling(__file__, "_kd_digits").get_config("resnet8", num_steps=400)
    d = config.distill
    if method == "template":
        d.template.block = "layer3_0"
        d.template.templates_per_class = 2
        return config
    d.method = method
    if method in ("kd", "letkd"):
        d.teacher_arch = "resnet20"
        d.teacher = "runs/kd_digits/teacher"
    if method == "kd":
        d.ce_weight, d.kd_weight = 0.1, 0.9
    if method == "letkd":
        d.letkd.num_words = 64
        d.letkd.max_points = 200_000
    return config
