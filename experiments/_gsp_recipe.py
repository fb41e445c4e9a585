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
(``GlobalPooling`` with ``use_max``), and drop ZSR, which needs GSP's attributes. For the release's BN-Inception
(MLRC protocol) set ``model.backbone=bninception`` and its converted weights.

Not yet as the release (issue 15): the prototype memory holds unit-normalised vectors and its k-center is not
seeded with its first K entries.
"""

from jaxdml.config import default_config

DATASETS = {
    # name: (prototypes, XBM batches, learning rate, epoch (steps per validation), Recall@K)
    "caltech_birds2011": (64, 25, 1e-5, 25, (1, 2, 4, 8)),
    "cars196": (64, 25, 1e-5, 25, (1, 2, 4, 8)),
    "stanford_online_products": (128, 1400, 1e-4, 250, (1, 10, 100, 1000)),
    "inshop": (128, 400, 1e-4, 250, (1, 10, 20, 30, 40, 50)),
}


def get_config(dataset: str, pooling: str = "gsp"):
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
