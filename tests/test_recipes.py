"""The released recipes' settings, read from the experiment files (letKD supplement §1.2, the GSP release's
resnet50_small / resnet50_large / default configs): each line of this file is a value of the release."""

import pytest
from train_helpers import REPO

from jaxdml.config import load_config_file
from jaxdml.trainers import resolve_config

EXPERIMENTS = REPO / "experiments"


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


@pytest.mark.parametrize(("dataset", "small"), [("cub", True), ("cars", True), ("sop", False), ("inshop", False)])
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
