"""The GSP recipe on the real DML datasets (shared by experiments/gsp_*.py and their gap_* twins).

Released recipe (TF framework, sample_runs.sh: ``--loss=zsr/xbm/original_contrastive
--pooling=GeneralizedSumPooling``): GSP with K = 64 prototypes (CUB, Cars) or 128 (SOP, In-Shop), transport ratio
0.3, gamma 5, prototypes by greedy k-center over 1,024 GAP embeddings; C1 contrastive loss (cosine similarity,
negatives above 0.5 penalised) with the release's cross-batch memory of 25 / 1,400 / 400 batches (CUB & Cars / SOP /
In-Shop): L(batch, batch) + L(batch, memory), the memory term once the memory has filled after step 100
(resnet50_small: CUB, Cars) or 1,000 (resnet50_large: SOP, In-Shop), i.e. from step 125 / 2,400 / 1,400; 0.9 * L_C1
+ 0.1 * L_ZSR. Here on the conventional single-model protocol with ResNet-50 (ImageNet weights from
``weights/resnet50``, made by ``python -m jaxdml.models.convert``; 512-d, frozen BN, 28 x 4 batches, Adam, weight
decay 4e-4 off BN/biases; as the release's resnet50_small (CUB, Cars): GeM over the backbone map weighted by the
transported mass, then the projection; as its resnet50_large (SOP, In-Shop): the weighted sum plus the projection of
the backbone's max pool). Schedule as the release's conventional configs: validation every "epoch" of 25 steps (CUB,
Cars) or 250 (SOP, In-Shop) on R@1 (its monitored "recall"); the learning rate halves after 4 (3) validations
without a gain of 1e-3 (Keras' ReduceLROnPlateau: cooldown 2, floor 1e-6); training stops after 15 (10) validations
without a new best, and the best checkpoint is the result; gradients clipped to global norm 10, then value 10. 227 x
227 crops (the release's for every backbone). Images are decoded once into the image cache (``data.cache_dir``). The
GAP twins (``gap_*.py``) change only the pooling, to GAP + GMP as the release's conventional baseline
(``GlobalPooling`` with ``use_max``), and drop ZSR, which needs GSP's attributes.

MLRC variants (``mlrc_<loss>`` and ``mlrc_<loss>_xbm``, loss c1 | c2 | ms | triplet; :func:`get_mlrc_config`): the
release's main recipe, ``sample_runs.sh`` ("BNInception Runs": ``--cfg=dml_small`` for CUB and Cars, ``dml_large`` for
SOP and In-Shop; ``--loss=zsr/xbm/original_contrastive``) is ``mlrc_c1_xbm``. On the MLRC fold trainer of
experiments/_mlrc_recipe.py (BN-Inception with frozen BN, 4 class-disjoint folds x 128-d, concatenated to 512-d;
8 classes x 4 images; Adam lr 1e-5 constant, weight decay 1e-4 off BN, clip norm 10 and value 10; 227 crops), with
the GSP release's own settings where they differ from the CCP release that recipe follows:
* ``dml_default.yaml`` / ``dml_small.yaml`` / ``dml_large.yaml``: GSP with K = 64 (small) / 128 (large) prototypes,
  transport ratio 0.3, gamma 5, memory 1,024, ``warm_up_steps: 0``, neither ``augment_max_pool`` nor ``use_gemp``
  (the layer's defaults: plain GSP); ``learning_rate_scheduler: constant``; ``steps_per_epoch`` 100 (small) / 1,000
  (large) between validations and ``early_stopping_patience`` 15 / 10; ZSR ``prediction_loss_weight: 0.1``,
  ``regression_regularizer_weight: 0.05`` (scale 9.5 in ``zsr_loss.py``); XBM ``start_at: 1000`` with
  ``batches_in_mem`` 25 (small; ``trainModel.py`` sets 1,400 for SOP and 400 for In-Shop), batch vs batch + batch vs
  memory (``xbm_weight``, ``pair_loss_weight`` 1) from step 1,000 + the memory size.
* ``framework/configs/default.py``: ``lipschitz_cont = False`` (the GSP configs never set it, unlike the CCP release's
  ``dml_default.yaml``), so the losses, the validation, each model's test embedding and the 512-d concatenation use
  plain L2 normalisation; Adam ``beta_2 = 0.999`` (``configs/optimizers.py``); the validation monitors MAP@R
  (``DMLEval.monitored_metric = 'MAP'``) with ``min_improvement_margin`` 1e-5 and restores the best weights.
* The C2, MS and triplet settings are the CCP supplement's tuned values of experiments/_mlrc_recipe.py, as for the
  CCP/XBML baselines of the same protocol; the GSP release's code defaults are C2 (0, 0.5), MS (2, 50, 0.5) and
  triplet 0.05, and its sample_runs.sh runs only C1.
The MLRC GAP twins are plain GAP (``dml_default.yaml``: ``GlobalPooling`` with ``use_average: true, use_max: false``,
the release's default ``--pooling``), without ZSR, on the same protocol.

Not as the release in the MLRC variants: early stopping counts any gain as a new best (the release's margin is
1e-5); the transport is solved exactly (Newton root) where the release runs 100 fixed-point steps; weight decay skips
biases too; the release's "model i" (1-based) validates on our fold 4 - i.
"""

from jaxdml.config import default_config, load_sibling

DATASETS = {
    # name: (prototypes, XBM batches, learning rate, epoch (steps per validation), Recall@K)
    "caltech_birds2011": (64, 25, 1e-5, 25, (1, 2, 4, 8)),
    "cars196": (64, 25, 1e-5, 25, (1, 2, 4, 8)),
    "stanford_online_products": (128, 1400, 1e-4, 250, (1, 10, 100, 1000)),
    "inshop": (128, 400, 1e-4, 250, (1, 10, 20, 30, 40, 50)),
}


MLRC_LOSSES = ("c1", "c2", "ms", "triplet")
MLRC_VARIANTS = tuple(f"mlrc_{loss}{xbm}" for xbm in ("", "_xbm") for loss in MLRC_LOSSES)


def get_config(dataset: str, pooling: str = "gsp"):
    """The conventional ResNet-50 recipe (``pooling``: gsp, or gap+gmp for the GAP twins)."""
    prototypes, xbm_batches, lr, epoch, ks = DATASETS[dataset]
    small = epoch == 25  # the release's resnet50_small (CUB, Cars) / resnet50_large (SOP, In-Shop) configs
    config = default_config()
    config.data.name = dataset
    config.data.image_size, config.data.resize_size = 227, 256
    config.data.samples_per_class = 4
    config.data.num_workers = 8
    config.data.cache_dir = "default"  # <TFDS data_dir>/jaxdml_cache
    config.model.backbone = "resnet50"
    config.model.pretrained = "weights/resnet50"  # python -m jaxdml.models.convert --arch resnet50 ...
    config.model.embedding_dim = 512
    config.model.freeze_bn = True
    config.model.pooling = pooling
    config.model.gsp.num_prototypes = prototypes
    config.model.gsp.transport_ratio = 0.3
    config.model.gsp.gamma = 5.0
    config.model.gsp.memory_size = 1024
    config.model.gsp.gem = small  # resnet50_small: use_gemp
    config.model.gsp.augment_max_pool = not small  # resnet50_large: augment_max_pool
    config.loss.name = "contrastive"
    config.loss.kwargs.distance = "cosine"
    config.loss.kwargs.pos_margin = 1.0 - 1e-5  # positives: [1 - 1e-5 - s]+, as the TF original_contrastive
    config.loss.kwargs.neg_margin = 0.5  # negatives: [s - 0.5]+
    config.loss.kwargs.reduction = "sum_per_anchor"  # sum of pair terms / batch size (TF code's C1)
    config.loss.xbm.batches = xbm_batches
    config.loss.xbm.start_step = 100 if small else 1000
    config.loss.xbm.mode = "release"
    config.loss.zsr.weight = 0.1 if pooling == "gsp" else 0.0
    config.optim.name = "adam"
    config.optim.lr = lr
    config.optim.weight_decay = 4e-4
    config.optim.grad_clip_norm, config.optim.grad_clip_value = 10.0, 10.0
    config.optim.plateau.factor, config.optim.plateau.patience = 0.5, 4 if small else 3
    config.optim.plateau.min_delta, config.optim.plateau.cooldown, config.optim.plateau.min_lr = 1e-3, 2, 1e-6
    config.train.batch_size = 112
    config.train.num_steps = 1000 * epoch  # an upper bound: early stopping ends the run
    config.train.patience = 15 if small else 10
    config.train.log_every = epoch
    config.train.eval_every = epoch
    config.train.checkpoint_every = 20 * epoch
    config.eval.selection_metric = "precision_at_1"  # = R@1, the release's monitored "recall"
    config.eval.ks = ks
    config.eval.clustering = dataset in ("caltech_birds2011", "cars196")  # k-means on 60k SOP points is slow
    return config


def get_mlrc_config(dataset: str, variant: str, pooling: str = "gsp"):
    """The release's BN-Inception MLRC recipe (``variant`` in :data:`MLRC_VARIANTS`; ``pooling``: gsp, or gap for the
    GAP twins) on the fold trainer of experiments/_mlrc_recipe.py."""
    if variant not in MLRC_VARIANTS:
        raise ValueError(f"unknown MLRC variant {variant!r}; choose one of {', '.join(MLRC_VARIANTS)}")
    prototypes, xbm_batches, _, epoch, _ = DATASETS[dataset]
    small = epoch == 25  # the release's dml_small (CUB, Cars) / dml_large (SOP, In-Shop)
    config = load_sibling(__file__, "_mlrc_recipe").get_config(dataset, variant.removeprefix("mlrc_"))
    assert config.data.folds == 4 and config.model.backbone == "bninception" and config.trainer == "metric_learning"
    config.model.embedding_norm = "l2"  # default.py: lipschitz_cont = False
    config.loss.kwargs.normalize = "l2"
    config.optim.b2 = 0.999  # Keras' Adam default (configs/optimizers.py)
    config.model.pooling = pooling
    config.model.gsp.num_prototypes = prototypes  # support_size
    config.model.gsp.transport_ratio = 0.3
    config.model.gsp.gamma = 5.0  # entropy_regularizer_weight
    config.model.gsp.memory_size = 1024
    config.model.gsp.gem = False  # use_gemp: false (layer default)
    config.model.gsp.augment_max_pool = False  # augment_max_pool: false (layer default)
    config.loss.zsr.weight = 0.1 if pooling == "gsp" else 0.0  # prediction_loss_weight
    config.loss.zsr.ridge, config.loss.zsr.scale = 0.05, 9.5  # regression_regularizer_weight; zsr_loss.py
    if variant.endswith("_xbm"):
        config.loss.xbm.batches = xbm_batches  # batches_in_mem (trainModel.py: 1,400 SOP, 400 In-Shop)
        config.loss.xbm.start_step = 1000  # start_at
        config.loss.xbm.mode = "release"
    epoch = 100 if small else 1000  # steps_per_epoch
    config.train.eval_every = config.train.log_every = epoch
    config.train.checkpoint_every = 5 * epoch
    config.train.patience = 15 if small else 10  # early_stopping_patience
    config.train.num_steps = 400 * epoch  # an upper bound: early stopping ends every fold before it
    config.optim.plateau.factor = 0.0  # learning_rate_scheduler: constant
    config.eval.selection_metric = "map_at_r"  # DMLEval monitored_metric 'MAP'
    return config
