"""Embedded evidence for CCP: C2 contrastive with and without CCP on the MLRC four-fold protocol, digit pairs.

The MLRC protocol of experiments/_mlrc_recipe.py shrunk to the embedded two-digit numbers (no download): the 50
training numbers cut into 4 class-disjoint folds, one model per fold (a small CNN, GAP, 32-d Lipschitz-normalised
embedding) trained on 3 folds and selected on the fourth by MAP@R (validation every 20 steps, stop after 8 without
a new best, at most 400 steps), batches of 8 classes x 4 images; then each model and the 128-d concatenation on
the 50 held-out numbers. ``plain`` trains C2 (m+ 0, m- 0.3841, CUB's setting); ``ccp`` the same loss under CCP
(8 proxies per class, pools of 12, lambda 2e-4 from round 2, a new round after 3 validations without a gain).

    python -m jaxdml.main --config experiments/ccp_digits.py:plain --workdir runs/ccp_digits/plain
    python -m jaxdml.main --config experiments/ccp_digits.py:ccp --workdir runs/ccp_digits/ccp

Expected on 2 CPU cores: about 8 minutes each (four folds, then the evaluation). Test classes, seeds 0-2 (mean +- std),
P@1 / MAP@R / R-precision, measured at commit d0ea5f7 by `python benchmarks/embedded_results.py --only ccp`:
               32-d models (mean of 4)                      128-d concatenation
    plain  91.30 +- 0.61 / 64.48 +- 1.28 / 70.74 +- 0.91   97.24 +- 0.48 / 78.95 +- 1.27 / 82.47 +- 0.99
    ccp    89.20 +- 3.48 / 60.85 +- 6.32 / 67.85 +- 5.20   95.29 +- 1.84 / 73.62 +- 6.38 / 78.18 +- 5.22
CCP is ahead on one seed of three (concatenated MAP@R +1.72, -11.88, -5.83); most folds still improve at step 400
and reach at most one new round, so this small setting hardly exercises CCP's rounds (see README, CCP).
"""

from jaxdml.config import load_sibling

VARIANTS = ("plain", "ccp")


def get_config(variant: str = "ccp"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    recipe = load_sibling(__file__, "_mlrc_recipe")
    config = load_sibling(__file__, "digit_pairs").get_config()
    config.data.folds = 4
    config.data.samples_per_class = 4
    config.model.embedding_dim = 32
    config.model.embedding_norm = "lipschitz"
    config.loss.kwargs = {}
    recipe.set_base_loss(config, "c2", recipe.DATASETS["caltech_birds2011"])
    config.optim.schedule = "constant"
    config.optim.lr = 1e-3
    config.train.batch_size = 32
    config.train.num_steps = 400
    config.train.eval_every = 20
    config.train.patience = 8
    config.train.log_every = 20
    config.train.checkpoint_every = 100
    config.eval.at_start = False
    if variant == "ccp":
        config.trainer = "ccp"
        config.ccp.proxies_per_class = 8
        config.ccp.pool_per_class = 12
        config.ccp.proximal = 2e-4
        config.ccp.round_patience = 3
    return config
