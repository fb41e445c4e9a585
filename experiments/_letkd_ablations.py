"""The letKD supplement's CIFAR-100 ablations as variants of the CIFAR-100 recipe (experiments/_letkd_cifar100.py).

Tables 4-5 (RN56 -> RN20, experiments/letkd_cifar100_rn56_rn20.py): which KD layers are in the student and their
residual weights alpha (0 = the layer's scores are supervised but its value is not added: "lift the
knowledge-based feature transform"). Table 6 (RN110 -> RN32, experiments/letkd_cifar100_rn110_rn32.py): FitNet on
the stage-2 outputs, alone and with the penultimate KD layer, without and with its supervision. Each entry:
variant -> (the table row, the paper's top-1 or probe accuracy, the settings).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxdml.config import load_sibling

# Table 5: (inter, alpha_inter, penult, alpha_penult) -> top-1 (5 trials); "-" = the layer is not in the student.
TABLE5: dict[str, tuple[str, float, dict[str, Any]]] = {
    "inter_a0": ("Table 5: Inter. yes alpha 0 / Penult. -", 70.64,
                 {"penultimate": False, "intermediate": True, "intermediate_alpha": 0.0}),
    "inter_a1": ("Table 5: Inter. yes alpha 1 / Penult. -", 70.80,
                 {"penultimate": False, "intermediate": True, "intermediate_alpha": 1.0}),
    "penult_a0": ("Table 5: Inter. - / Penult. yes alpha 0", 71.84,
                  {"penultimate": True, "intermediate": False, "penultimate_alpha": 0.0}),
    "penult_a1": ("Table 5: Inter. - / Penult. yes alpha 1 (= letKD-1)", 72.44,
                  {"penultimate": True, "intermediate": False, "penultimate_alpha": 1.0}),
    "inter_a0_penult_a0": ("Table 5: Inter. alpha 0 / Penult. alpha 0", 71.70,
                           {"intermediate_alpha": 0.0, "penultimate_alpha": 0.0}),
    "inter_a0_penult_a1": ("Table 5: Inter. alpha 0 / Penult. alpha 1; Table 4: letKD-2 (alpha_inter = 0), LDA "
                           "probe on x: 52.71", 72.13, {"intermediate_alpha": 0.0, "penultimate_alpha": 1.0}),
    "inter_a1_penult_a0": ("Table 5: Inter. alpha 1 / Penult. alpha 0", 72.78,
                           {"intermediate_alpha": 1.0, "penultimate_alpha": 0.0}),
    "inter_a1_penult_a1": ("Table 5: Inter. alpha 1 / Penult. alpha 1 (= letKD-2); Table 4: letKD-2 "
                           "(alpha_inter = 1), LDA probe on x 51.71, on x-hat 56.36", 73.27,
                           {"intermediate_alpha": 1.0, "penultimate_alpha": 1.0}),
}
# Table 4 trains the two letKD-2 students above; its numbers are a linear probe of their intermediate features.
TABLE4_ALIASES = {"table4_alpha0": "inter_a0_penult_a1", "table4_alpha1": "inter_a1_penult_a1"}

# Table 6 (RN110 -> RN32): top-1 (5 trials).
TABLE6: dict[str, tuple[str, float]] = {
    "table6_fitnet": ("Table 6: FitNet (stage-2 outputs)", 71.59),
    "table6_fitnet_layer": ("Table 6: FitNet + KD layer without supervision", 71.80),
    "table6_fitnet_letkd": ("Table 6: FitNet + KD layer with supervision", 73.36),
}


def stage2_output(arch: str) -> str:
    """The last block of stage 2 of a CIFAR ResNet (``resnetN``: (N - 2) / 6 blocks a stage)."""
    return f"layer2_{(int(arch.removeprefix('resnet')) - 2) // 6 - 1}"


def table5(student: str, teacher: str, variant: str) -> ml_collections.ConfigDict:
    """letKD-2 (CIFAR-100 recipe) with the layers and alphas of a Table 5 row (or Table 4 alias)."""
    _, _, settings = TABLE5[TABLE4_ALIASES.get(variant, variant)]
    config = load_sibling(__file__, "_letkd_cifar100").get_config(student, teacher, "letkd2")
    for key, value in settings.items():
        config.distill.letkd[key] = value
    return config


def table6(student: str, teacher: str, variant: str) -> ml_collections.ConfigDict:
    """FitNet on the stage-2 outputs (weight 100), plus the penultimate KD layer (K = 4,096, alpha 1) without
    (weight 0) or with (weight 1) its supervision."""
    config = load_sibling(__file__, "_letkd_cifar100").get_config(student, teacher, "letkd1")
    d = config.distill
    d.hint_block, d.teacher_hint_block = stage2_output(student), stage2_output(teacher)
    d.fitnet_weight = 100.0
    if variant == "table6_fitnet":
        d.method = "fitnet"
        return config
    d.method = "fitnet+letkd"
    d.letkd.intermediate = False
    d.letkd.penultimate_weight = 0.0 if variant == "table6_fitnet_layer" else 1.0
    return config


def listing(variants: dict[str, tuple]) -> str:
    """One line per variant: name, table row, paper number (for docstrings and error messages)."""
    return "\n".join(f"  {name}: {row[0]} -> {row[1]:.2f}" for name, row in variants.items())
