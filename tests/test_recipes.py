"""The released recipes' settings, read from the experiment files (letKD supplement §1.2, the GSP release's
resnet50_small / resnet50_large / dml_small / dml_large / default configs): each line of this file is a value of the
release."""

import pytest
from train_helpers import REPO

from jaxdml.config import load_config_file
from jaxdml.trainers import resolve_config

EXPERIMENTS = REPO / "experiments"
GSP_DATASETS = [("cub", True), ("cars", True), ("sop", False), ("inshop", False)]  # (name, the release's *_small)
MLRC_VARIANTS = [f"mlrc_{loss}{xbm}" for xbm in ("", "_xbm") for loss in ("c1", "c2", "ms", "triplet")]


def config(name):
    cfg = load_config_file(EXPERIMENTS / name)
    resolve_config(cfg)  # and it validates
    return cfg


@pytest.mark.parametrize(("pair", "alphas"), [
    ("rn50_mnv2", (0.5, 1.0)),  # "for Tiny-ImageNet, we arrange alpha_penult = 0.5 and alpha_inter = 1"
    ("rn56_rn20", (1.0, 1.0)), ("wrn40_2_wrn16_2", (1.0, 1.0)), ("wrn40_2_wrn40_1", (1.0, 1.0)),
    ("wrn40_2_shv1", (1.0, 1.0)),  # "(1, 1) in all models except for RN50-MNV2"
])
def test_tiny_imagenet_residual_weights(pair, alphas):
    letkd = config(f"letkd_tiny_imagenet_{pair}.py").distill.letkd
    assert (letkd.penultimate_alpha, letkd.intermediate_alpha) == alphas


@pytest.mark.parametrize(("dataset", "small"), GSP_DATASETS)
def test_gsp_recipe_is_the_releases(dataset, small):
    cfg = config(f"gsp_{dataset}.py")
    epoch = 25 if small else 250
    assert cfg.data.image_size == 227
    assert (cfg.model.gsp.gem, cfg.model.gsp.augment_max_pool) == (small, not small)
    assert (cfg.loss.xbm.mode, cfg.loss.xbm.start_step) == ("release", 100 if small else 1000)
    assert (cfg.train.eval_every, cfg.train.patience) == (epoch, 15 if small else 10)
    p = cfg.optim.plateau
    assert (p.factor, p.patience, p.min_delta, p.cooldown, p.min_lr) == (0.5, 4 if small else 3, 1e-3, 2, 1e-6)
    assert (cfg.optim.grad_clip_norm, cfg.optim.grad_clip_value) == (10.0, 10.0)
    assert cfg.eval.selection_metric == "precision_at_1"  # the release monitors recall@1
    twin = config(f"gap_{dataset}.py")
    assert (twin.model.pooling, twin.loss.zsr.weight) == ("gap+gmp", 0.0)


@pytest.mark.parametrize("variant", MLRC_VARIANTS)
@pytest.mark.parametrize(("dataset", "small"), GSP_DATASETS)
def test_gsp_mlrc_variants_are_the_releases_bninception_runs(dataset, small, variant):
    """sample_runs.sh ("BNInception Runs"): --cfg=dml_small (CUB, Cars) / dml_large (SOP, In-Shop),
    --loss=zsr/xbm/original_contrastive --pooling=GeneralizedSumPooling, on the MLRC fold trainer."""
    cfg = config(f"gsp_{dataset}.py:{variant}")
    assert (cfg.trainer, cfg.data.folds, cfg.data.fold) == ("metric_learning", 4, -1)  # num_models: 4
    assert (cfg.model.backbone, cfg.model.freeze_bn, cfg.model.embedding_dim) == ("bninception", True, 128)
    assert (cfg.train.batch_size, cfg.data.samples_per_class) == (32, 4)  # classes_per_batch 8, sample_per_class 4
    assert (cfg.data.image_size, cfg.data.resize_size) == (227, 256)
    o = cfg.optim
    assert (o.name, o.lr, o.b1, o.b2, o.weight_decay) == ("adam", 1e-5, 0.9, 0.999, 1e-4)  # Adam, Keras betas
    assert (o.grad_clip_norm, o.grad_clip_value, o.plateau.factor) == (10.0, 10.0, 0.0)  # scheduler: constant
    g = cfg.model.gsp
    assert (cfg.model.pooling, g.num_prototypes) == ("gsp", 64 if small else 128)  # support_size
    assert (g.transport_ratio, g.gamma, g.memory_size) == (0.3, 5.0, 1024)
    assert (g.gem, g.augment_max_pool) == (False, False)  # dml_*.yaml set neither use_gemp nor augment_max_pool
    assert (cfg.loss.zsr.weight, cfg.loss.zsr.ridge, cfg.loss.zsr.scale) == (0.1, 0.05, 9.5)
    assert (cfg.model.embedding_norm, cfg.loss.kwargs.normalize) == ("l2", "l2")  # lipschitz_cont = False
    epoch = 100 if small else 1000  # steps_per_epoch
    assert (cfg.train.eval_every, cfg.train.patience) == (epoch, 15 if small else 10)  # early_stopping_patience
    assert cfg.eval.selection_metric == "map_at_r"  # DMLEval monitored_metric: MAP
    memory = {"cub": 25, "cars": 25, "sop": 1400, "inshop": 400}[dataset]  # batches_in_mem (trainModel.py)
    if variant.endswith("_xbm"):
        assert (cfg.loss.xbm.mode, cfg.loss.xbm.start_step, cfg.loss.xbm.batches) == ("release", 1000, memory)
    else:
        assert cfg.loss.xbm.batches == 0
    if variant.startswith("mlrc_c1"):  # original_contrastive: cosine, margin 0.5
        kw = cfg.loss.kwargs
        assert (cfg.loss.name, kw.distance, kw.neg_margin, kw.reduction) == (
            "contrastive", "cosine", 0.5, "sum_per_anchor")
    twin = config(f"gap_{dataset}.py:{variant}")  # GlobalPooling: use_average true, use_max false; no ZSR
    assert (twin.model.pooling, twin.loss.zsr.weight) == ("gap", 0.0)
    twin.model.pooling, twin.loss.zsr.weight = "gsp", 0.1
    assert twin.to_dict() == cfg.to_dict(), "the GAP twin differs from the GSP variant only in pooling and ZSR"


@pytest.mark.parametrize(("dataset", "small"), GSP_DATASETS)
def test_gsp_files_without_a_variant_stay_the_conventional_resnet50_recipe(dataset, small):
    for method, pooling, zsr in (("gsp", "gsp", 0.1), ("gap", "gap+gmp", 0.0)):
        cfg = config(f"{method}_{dataset}.py")
        assert (cfg.model.backbone, cfg.model.embedding_dim, cfg.data.folds) == ("resnet50", 512, 0)
        assert (cfg.model.pooling, cfg.loss.zsr.weight, cfg.train.batch_size) == (pooling, zsr, 112)
        assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-5 if small else 1e-4, 4e-4)
        assert (cfg.loss.xbm.batches, cfg.train.eval_every) == ({"cub": 25, "cars": 25, "sop": 1400,
                                                                  "inshop": 400}[dataset], 25 if small else 250)


def test_unknown_gsp_mlrc_variant_is_refused():
    with pytest.raises(ValueError, match="mlrc_c1_xbm"):
        config("gsp_cub.py:mlrc_c1_xbml")


def test_mlrc_recipe_clips_and_uses_the_releases_memory():
    cfg = config("ccp_cub.py:c2_xbm")
    assert (cfg.optim.grad_clip_norm, cfg.optim.grad_clip_value) == (10.0, 10.0)
    assert (cfg.loss.xbm.mode, cfg.loss.xbm.start_step, cfg.loss.xbm.batches) == ("release", 1000, 25)


@pytest.mark.parametrize("dataset", ["cifar100", "tiny_imagenet"])
def test_rn50_to_mobilenetv2_intermediate_layer_is_where_the_release_puts_it(dataset):
    """After the student's blocks[5] (the 80-channel stage; our blocks5_2), reading the teacher's layer4[0]."""
    from jaxdml.models.cifar import CIFAR_NETWORKS

    letkd = config(f"letkd_{dataset}_rn50_mnv2.py").distill.letkd
    assert (letkd.student_block, letkd.teacher_block) == ("blocks5_2", "layer4_0")
    student = CIFAR_NETWORKS["mobilenetv2"](100)
    assert [b for b in student.block_names() if b.startswith("blocks5_")][-1] == "blocks5_2"
    assert int(student.stages()[5][1] * student.width) == 80


def test_letkd_cifar_recipe_reflects_and_decays_every_parameter():
    student = config("letkd_cifar100_rn56_rn20.py")
    assert (student.data.augment, student.data.pad_mode, student.optim.decay_all) == ("pad_crop", "reflect", True)
    teacher = config("cifar100_teacher.py:resnet56")  # the KD code base's teachers: zero padding
    assert (teacher.data.pad_mode, teacher.optim.decay_all) == ("zeros", True)


def test_reflect_padding_is_torchvisions():
    import numpy as np

    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchvision.transforms.functional")
    from jaxdml.data.transforms import pad_crop_transform

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for mode, torch_mode in (("reflect", "reflect"), ("zeros", "constant")):
        # a crop of the whole padded image is the padded image
        ours = pad_crop_transform(image, np.random.default_rng(1), size=40, padding=4, flip=False, pad_mode=mode)
        theirs = functional.pad(torch.from_numpy(image).permute(2, 0, 1), [4], padding_mode=torch_mode)
        np.testing.assert_array_equal(ours, theirs.permute(1, 2, 0).numpy())


def test_decay_all_decays_batchnorm_and_biases_too():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdml.config import default_config
    from jaxdml.train.optim import make_optimizer

    params = {"backbone": {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4),
                                                                             "bias": jnp.full(4, 2.0)}}}
    stats = {"backbone": {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}}
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum, cfg.weight_decay = "sgd", 0.1, 0.0, 0.01
    zeros = jax.tree.map(jnp.zeros_like, params)
    for decay_all in (False, True):
        cfg.decay_all = decay_all
        tx = make_optimizer(cfg, 10, params, stats)
        updates, _ = tx.update(zeros, tx.init(params), params)
        np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.1 * 0.01, rtol=1e-6)
        expected_bias = -0.1 * 0.01 * 2.0 if decay_all else 0.0
        np.testing.assert_allclose(updates["backbone"]["bn"]["bias"], expected_bias, rtol=1e-6, atol=0)
