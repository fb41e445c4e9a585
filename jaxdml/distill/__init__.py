"""Knowledge distillation: teacher artefacts, the distillation model and objective (LeTKD, KD, FitNet)."""
