"""The GSP recipe on the real DML datasets (shared by experiments/gsp_*.py and their gap_* twins).

Released recipe (TF framework, sample_runs.sh: ``--loss=zsr/xbm/original_contrastive
--pooling=GeneralizedSumPooling``): GSP with K = 64 prototypes (CUB, Cars) or 128 (SOP, In-Shop), transport
ratio 0.3, gamma 5, prototypes by greedy k-center over 1,024 GAP embeddings; C1 contrastive loss (cosine
similarity, negatives above 0.5 penalised) inside a cross-batch memory of 25 / 1,400 / 400 batches (CUB & Cars /
SOP / In-Shop) from step 1,000; 0.9 * L_C1 + 0.1 * L_ZSR. Here on the conventional single-model protocol with
ResNet-50 (ImageNet weights from ``weights/resnet50``, made by ``python -m jaxdml.models.convert``; 512-d,
frozen BN, 28 x 4 batches, Adam, weight decay 4e-4 off BN/biases, GeM over the GSP-weighted features as the
release's resnet50 configs). Images are decoded once into the image cache (``data.cache_dir``). The GAP twin
changes only the pooling (and drops ZSR, which needs GSP's attributes). For the release's BN-Inception
(MLRC protocol) set ``model.backbone=bninception``, ``data.image_size=227`` and its converted weights.
"""

from jaxdml.config import default_config

DATASETS = {
    # name: (prototypes, XBM batches, learning rate, steps, Recall@K)
    "caltech_birds2011": (64, 25, 1e-5, 10_000, (1, 2, 4, 8)),
    "cars196": (64, 25, 1e-5, 10_000, (1, 2, 4, 8)),
    "stanford_online_products": (128, 1400, 1e-4, 50_000, (1, 10, 100, 1000)),
    "inshop": (128, 400, 1e-4, 50_000, (1, 10, 20, 30, 40, 50)),
}


def get_config(dataset: str, pooling: str = "gsp"):
    prototypes, xbm_batches, lr, steps, ks = DATASETS[dataset]
    config = default_config()
    config.data.name = dataset
    config.data.image_size, config.data.resize_size = 224, 256
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
    config.model.gsp.gem = True
    config.loss.name = "contrastive"
    config.loss.kwargs.distance = "cosine"
    config.loss.kwargs.pos_margin = 1.0 - 1e-5  # positives: [1 - 1e-5 - s]+, as the TF original_contrastive
    config.loss.kwargs.neg_margin = 0.5  # negatives: [s - 0.5]+
    config.loss.kwargs.reduction = "sum_per_anchor"  # sum of pair terms / batch size (TF code's C1)
    config.loss.xbm.batches = xbm_batches
    config.loss.xbm.start_step = 1000
    config.loss.zsr.weight = 0.1 if pooling == "gsp" else 0.0
    config.optim.name = "adam"
    config.optim.lr = lr
    config.optim.weight_decay = 4e-4
    config.train.batch_size = 112
    config.train.num_steps = steps
    config.train.log_every = 100
    config.train.eval_every = steps // 20
    config.train.checkpoint_every = steps // 20
    config.eval.ks = ks
    config.eval.clustering = dataset in ("caltech_birds2011", "cars196")  # k-means on 60k SOP points is slow
    return config
