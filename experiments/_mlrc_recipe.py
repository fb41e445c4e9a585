"""The MLRC protocol recipe and the rows of the CCP paper's tables (shared by experiments/ccp_*.py and xbml_*.py).

Protocol ("A Metric Learning Reality Check", as the CCP supplement and the GSP/CCP TensorFlow release run it):
BN-Inception (ImageNet weights from ``weights/bninception``, made by ``python -m jaxdml.models.convert``) with frozen
BatchNorm, GAP and a 128-d linear head; 4 class-disjoint folds of the training classes, model k trained on the other
three and selected on fold k by MAP@R (``data.folds=4``); batches of 8 classes x 4 images; Adam, lr 1e-5, beta2
0.99, weight decay 1e-4 off BatchNorm, gradients clipped to global norm 10 then to value 10 (which cannot bind
after the norm clip, but is the release's); 227 x 227 random-resized crops (area 0.16-1,
aspect 3/4-4/3) and flips, test images resized to 256 and centre-cropped to 227; validation every 25 steps
(CUB, Cars) or 250 (SOP, In-Shop), training stops after 60 validations without a new best and the best is kept.
Embeddings are Lipschitz-normalised (v / max(1, |v|)) for the losses and the evaluation, as in the release.

Variants (``experiments/ccp_<dataset>.py:<variant>``): ``c1``, ``c2``, ``ms``, ``triplet`` (plain), each also
``<loss>_xbm`` (the release's cross-batch memory of the supplement's L size: L(batch, batch) + L(batch, memory)
once the memory has filled after step 1,000; ``<loss>_xbm_s``: its S size)
and ``<loss>_ccp`` (trainer
``ccp``: M proxies per class, 0.1 * L(batch) + 1.0 * L(batch, proxies), proximal lambda 2e-4 from round 2,
re-pick after 3 validations without a gain from pools of b embeddings per class); and ``proxy_anchor``,
``proxy_nca_pp``, ``soft_triple`` (one image per class per batch, proxies at 100x the learning rate, a one-epoch
warm-up with the backbone frozen). XBML (``experiments/xbml_<dataset>.py:<variant>``): ``<loss>_xbml`` and
``<loss>_xbml_r2`` for c1, c2 and ms: the XBML head (GAP plus coefficients over K = 32 prototypes, softmax scale
10) and ``0.9 L + 0.1 L_xbml`` in reading r1 (ZSR on the coefficients, ridge 0.05, scale 9.5) or r2 (prototypes
fitted to the other half); K, the scale, the weight and the ridge are the GSP release's MetaGlobalPooling / ZSR
values, not XBML's, which are not available to us.

Where the sources differ, this follows the supplement and says so:
* Adam beta2 = 0.99 (supplement) rather than Keras' 0.999 (the code); C2 margins are the supplement's tuned ones,
  not the code's defaults.
* Not as the release: weight decay skips biases too (the release decays every non-BatchNorm weight); CCP's pools
  are embedded with the evaluation transform; the release's "model i" (1-based) validates on our fold 4 - i.
"""

from jaxdml.config import default_config

# dataset: CCP proxies per class M, pool b, validation period, XBM (S, L) batches, Recall@K, loss settings
DATASETS = {
    "caltech_birds2011": dict(proxies=8, pool=12, epoch=25, xbm=(3, 25), ks=(1, 2, 4, 8),
                              c2=(0.0, 0.3841), triplet=0.0961, ms=(2.0, 40.0, 0.5),
                              soft_triple=(20.0, 0.1, 0.2, 0.01)),
    "cars196": dict(proxies=8, pool=12, epoch=25, xbm=(3, 25), ks=(1, 2, 4, 8),
                    c2=(0.2652, 0.5409), triplet=0.1190, ms=(14.35, 75.83, 0.66),
                    soft_triple=(17.69, 19.18, 0.0669, 0.3588)),
    "inshop": dict(proxies=4, pool=7, epoch=250, xbm=(100, 400), ks=(1, 10, 20, 30, 40, 50),
                   c2=(0.2858, 0.5130), triplet=0.0451, ms=(8.49, 57.38, 0.41),
                   soft_triple=(20.0, 0.1, 0.2, 0.01)),
    "stanford_online_products": dict(proxies=4, pool=7, epoch=250, xbm=(400, 1400), ks=(1, 10, 100, 1000),
                                     c2=(0.2858, 0.5130), triplet=0.0451, ms=(2.0, 40.0, 0.5),
                                     soft_triple=(100.0, 47.9, 0.2, 0.3145)),
}
BASE_LOSSES = ("c1", "c2", "ms", "triplet")
PROXY_LOSSES = ("proxy_anchor", "proxy_nca_pp", "soft_triple")
XBML_LOSSES = ("c1", "c2", "ms")
XBML_VARIANTS = tuple(f"{b}_{kind}" for kind in ("xbml", "xbml_r2") for b in XBML_LOSSES)
VARIANTS = (*BASE_LOSSES, *(f"{b}_{kind}" for kind in ("xbm", "xbm_s", "ccp") for b in BASE_LOSSES), *PROXY_LOSSES,
            *XBML_VARIANTS)


def set_base_loss(config, name: str, settings: dict) -> None:
    """``config.loss`` = the base loss ``name`` (c1 | c2 | ms | triplet) with the dataset's settings, on
    Lipschitz-normalised vectors as the release's losses."""
    loss = config.loss
    loss.kwargs.normalize = "lipschitz"
    if name == "c1":  # the release's original_contrastive: (sum_pos [1 - s]+ + sum_neg [s - 0.5]+) / B
        loss.name = "contrastive"
        loss.kwargs.distance = "cosine"
        loss.kwargs.pos_margin = 1.0 - 1e-5
        loss.kwargs.neg_margin = 0.5
        loss.kwargs.reduction = "sum_per_anchor"
    elif name == "c2":
        loss.name = "contrastive"
        loss.kwargs.pos_margin, loss.kwargs.neg_margin = settings["c2"]
    elif name == "ms":
        loss.name = "multi_similarity"
        loss.kwargs.alpha, loss.kwargs.beta, loss.kwargs.base = settings["ms"]
    elif name == "triplet":
        loss.name = "triplet_margin"
        loss.kwargs.margin = settings["triplet"]
    else:
        raise ValueError(f"unknown base loss {name!r}; one of {BASE_LOSSES}")


def get_config(dataset: str, variant: str = "c2_ccp"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    s = DATASETS[dataset]
    config = default_config()
    config.data.name = dataset
    config.data.image_size, config.data.resize_size = 227, 256
    config.data.crop_area, config.data.crop_aspect = (0.16, 1.0), (3 / 4, 4 / 3)
    config.data.samples_per_class = 4
    config.data.folds = 4
    config.data.num_workers = 8
    config.data.cache_dir = "default"  # <TFDS data_dir>/jaxdml_cache
    config.model.backbone = "bninception"
    config.model.pretrained = "weights/bninception"  # python -m jaxdml.models.convert --arch bninception ...
    config.model.freeze_bn = True
    config.model.pooling = "gap"
    config.model.embedding_dim = 128
    config.model.embedding_norm = "lipschitz"
    config.optim.name = "adam"
    config.optim.lr = 1e-5
    config.optim.b2 = 0.99
    config.optim.weight_decay = 1e-4
    config.optim.grad_clip_norm = 10.0
    config.optim.grad_clip_value = 10.0
    config.train.batch_size = 32
    config.train.num_steps = 400 * s["epoch"] * 4  # an upper bound: early stopping ends every run before it
    config.train.eval_every = s["epoch"]
    config.train.checkpoint_every = 20 * s["epoch"]
    config.train.patience = 60
    config.train.log_every = s["epoch"]
    config.eval.ks = s["ks"]
    config.eval.clustering = False  # MLRC reports P@1, R-precision and MAP@R
    base, _, kind = variant.partition("_")
    if variant in PROXY_LOSSES:
        config.loss.name = variant
        if variant == "proxy_anchor":
            config.loss.kwargs.margin, config.loss.kwargs.alpha = 0.1, 32.0
        elif variant == "proxy_nca_pp":
            config.loss.kwargs.temperature = 0.1
        else:
            lam, gamma, tau, delta = s["soft_triple"]
            config.loss.kwargs.la, config.loss.kwargs.gamma = lam, gamma
            config.loss.kwargs.tau, config.loss.kwargs.margin = tau, delta
        config.data.sampler, config.data.samples_per_class = "one_per_class", 1
        config.optim.lr_mult.loss = 100.0
        config.optim.freeze_backbone_steps = s["epoch"]
        return config
    set_base_loss(config, base, s)
    if kind in ("xbm", "xbm_s"):
        small, large = s["xbm"]
        config.loss.xbm.batches = small if kind == "xbm_s" else large
        config.loss.xbm.start_step = 1000
        config.loss.xbm.mode = "release"
    elif kind in ("xbml", "xbml_r2"):
        config.model.pooling = "xbml"
        config.model.xbml.num_prototypes, config.model.xbml.softmax_scale = 32, 10.0
        config.loss.xbml.weight, config.loss.xbml.ridge, config.loss.xbml.scale = 0.1, 0.05, 9.5
        config.loss.xbml.reading = "r2" if kind == "xbml_r2" else "r1"
    elif kind == "ccp":
        config.trainer = "ccp"
        config.ccp.proxies_per_class = s["proxies"]
        config.ccp.pool_per_class = s["pool"]
        config.ccp.pair_weight, config.ccp.proxy_weight = 0.1, 1.0
        config.ccp.proximal = 2e-4
        config.ccp.round_patience = 3
    return config
