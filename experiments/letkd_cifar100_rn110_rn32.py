"""CIFAR-100 distillation, ResNet-110 -> ResNet-32: letKD-2 by default; ``:none|kd|fitnet|letkd1`` for the baselines,
and the supplement's Table 6 (FitNet combined with the KD layer) as variants.

Recipe: experiments/_letkd_cifar100.py (240 epochs, batch 64, SGD 0.05). Prepare CIFAR-100 once (needs
TensorFlow) and convert the KD code base's teacher (its ``resnet110_vanilla/ckpt_epoch_240.pth``), or train one with
experiments/cifar100_teacher.py:resnet110 and point distill.teacher at that workdir:

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.models.convert --arch resnet110 --src resnet110_vanilla/ckpt_epoch_240.pth \\
        --out weights/resnet110
    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn110_rn32.py --workdir runs/rn110_rn32
    python -m jaxdml.main --config experiments/letkd_cifar100_rn110_rn32.py --workdir runs/rn110_rn32

(the third command computes the teacher artefacts; the fourth would do it too). Expected run time: not
measured (no GPU on the development machines). Expected top-1 (letKD paper, supp. Table 1, 5 trials):
teacher 74.31, student 71.14, KD 73.08, letKD-1 74.40 +- .14, letKD-2 74.62 +- .20.

Table 6 (5 trials; not measured here), e.g.
``python -m jaxdml.main --config experiments/letkd_cifar100_rn110_rn32.py:table6_fitnet_letkd --workdir runs/t6``.
FitNet regresses the stage-2 outputs (student layer2_4 onto teacher layer2_17, weight 100, as the supplement:
"We trained FitNet using the stage-2 outputs"); the KD layer is the penultimate one (K = 4,096, alpha 1).
``distill.method = "fitnet+letkd"`` adds both terms, each with its own weight. variant: table row -> top-1:
  table6_fitnet: Table 6: FitNet (stage-2 outputs) -> 71.59
  table6_fitnet_layer: Table 6: FitNet + KD layer without supervision (distill.letkd.penultimate_weight = 0) -> 71.80
  table6_fitnet_letkd: Table 6: FitNet + KD layer with supervision (penultimate_weight = 1) -> 73.36
(``:fitnet`` is the Table 1 FitNet baseline, 71.06, on the layer2_0 hint of the recipe.)
"""

from jaxdml.config import load_sibling

STUDENT, TEACHER = "resnet32", "resnet110"


def get_config(method: str = "letkd2"):
    ablations = load_sibling(__file__, "_letkd_ablations")
    if method in ablations.TABLE6:
        return ablations.table6(STUDENT, TEACHER, method)
    return load_sibling(__file__, "_letkd_cifar100").get_config(STUDENT, TEACHER, method)
