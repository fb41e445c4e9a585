"""Embedded evidence for CCP: C2 contrastive with and without CCP on the MLRC four-fold protocol, digit pairs.

The MLRC protocol of experiments/_mlrc_recipe.py shrunk to the embedded two-digit numbers (no download): the 50
training numbers cut into 4 class-disjoint folds, one model per fold (a small CNN, GAP, 32-d Lipschitz-normalised
embedding) trained on 3 folds and selected on the fourth by MAP@R (validation every 20 steps, stop after 8 without
a new best, at most 400 steps), batches of 8 classes x 4 images; then each model and the 128-d concatenation on
the 50 held-out numbers. ``plain`` trains C2 (m+ 0, m- 0.3841, CUB's setting); ``ccp`` the same loss under CCP
(8 proxies per class, pools of 12, lambda 2e-4 from round 2, a new round after 3 validations without a gain).

    python -m jaxdml.main --config experiments/ccp_digits.py:plain --workdir runs/ccp_digits/plain
    python -m jaxdml.main --config experiments/ccp_digits.py:ccp --workdir runs/ccp_digits/ccp

Expected: not measured yet.
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
