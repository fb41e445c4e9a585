"""CIFAR-100 with the template-matching block (BMVC 2022) in a CIFAR ResNet: ``:ARCH``, default resnet56.

    python -m jaxdml.data.prepare --dataset cifar100
    python -m jaxdml.main --config experiments/template_cifar100.py:resnet56 --workdir runs/template_resnet56
    python -m jaxdml.main --config experiments/cifar100_teacher.py:resnet56 --workdir runs/teacher_resnet56

The second run is the plain network to compare with (same recipe, experiments/_letkd_cifar100.py). The
block (1x1 templates -> BN -> ReLU -> 1x1, added to the input) sits after the first block of stage 3 with
two templates per class, each location's class scores (log-sum-exp over a class's templates) trained with
cross-entropy against the image label, weight 1. Placement, templates per class and weight are our reading
of the abstract and the letKD appendix: the paper's code is not public and its tables are not in our
reference material. Expected run time and numbers: not measured (no GPU on the development machines); the
demo's digits version (python -m jaxdml.distill.demo) gains 2.0 points over the plain ResNet-8 (mean over
seeds 0 / 1 / 2: +3.2 / +0.6 / +2.1; `python benchmarks/embedded_results.py --only distill` at commit 23c8326,
as at d9073a8).
"""

from jaxdml.config import load_sibling


def get_config(arch: str = "resnet56"):
    recipe = load_sibling(__file__, "_letkd_cifar100")
    config = recipe.get_config(arch)
    config.distill.template.block = recipe.first_block_of_stage3(arch)
    config.distill.template.templates_per_class = 2
    config.distill.template.weight = 1.0
    return config
