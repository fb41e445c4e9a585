"""CIFAR-100 distillation, ResNet-56 -> ResNet-20: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines,
and the supplement's Tables 4-5 ablations as variants.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``resnet56_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:resnet56 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet56 --src resnet56_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet56
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn56_rn20.py --workdir runs/rn56_rn20
    python -m jaxdml.main --config experiments/letkd_cifar100_rn56_rn20.py --workdir runs/rn56_rn20

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 72.34, student 69.06, KD 70.66, letKD-1 72.44 +- .24, letKD-2 73.27 +- .16.

Ablations (supp. Tables 4-5, 5 trials; not measured here), e.g.
``python -m jaxdml.main --config experiments/letkd_cifar100_rn56_rn20.py:inter_a0 --workdir runs/rn56_rn20_inter_a0``.
"Inter." / "Penult." = the intermediate (after layer3_0) / penultimate KD layer is in the student; alpha = its
residual weight (0: supervised scores, features unchanged). variant: table row -> paper's top-1:
  inter_a0: Table 5: Inter. yes alpha 0 / Penult. - -> 70.64
  inter_a1: Table 5: Inter. yes alpha 1 / Penult. - -> 70.80
  penult_a0: Table 5: Inter. - / Penult. yes alpha 0 -> 71.84
  penult_a1: Table 5: Inter. - / Penult. yes alpha 1 (= letKD-1) -> 72.44
  inter_a0_penult_a0: Table 5: Inter. alpha 0 / Penult. alpha 0 -> 71.70
  inter_a0_penult_a1: Table 5: Inter. alpha 0 / Penult. alpha 1 -> 72.13
  inter_a1_penult_a0: Table 5: Inter. alpha 1 / Penult. alpha 0 -> 72.78
  inter_a1_penult_a1: Table 5: Inter. alpha 1 / Penult. alpha 1 (= letKD-2) -> 73.27
  table4_alpha0: Table 4, letKD-2 with alpha_inter = 0 (= inter_a0_penult_a1); LDA probe accuracy on x: 52.71
  table4_alpha1: Table 4, letKD-2 with alpha_inter = 1 (= inter_a1_penult_a1); LDA probe on x 51.71, x-hat 56.36
Table 4's numbers are a linear (LDA) probe on the global-average-pooled input x / output x-hat of the intermediate
KD layer of these trained students: train the variant, then probe it (x and x-hat of layer3_0, LDA fitted on the
training images, accuracy on the test images; <workdir>/evaluations/probe_layer3_0_step<N>.json):

    python -m jaxdml.main --config experiments/letkd_cifar100_rn56_rn20.py:table4_alpha1 --workdir runs/table4_a1
    python -m jaxdml.probe --workdir runs/table4_a1
"""

from jaxdml.config import load_sibling

STUDENT, TEACHER = "resnet20", "resnet56"


def get_config(method: str = "letkd2"):
    ablations = load_sibling(__file__, "_letkd_ablations")
    if method in ablations.TABLE5 or method in ablations.TABLE4_ALIASES:
        return ablations.table5(STUDENT, TEACHER, method)
    return load_sibling(__file__, "_letkd_cifar100").get_config(STUDENT, TEACHER, method)
