"""Backbones and the embedding model: sizes of the torchvision originals, dtypes, frozen BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.config import default_config
from jaxdml.models import build_model


def model_for(**overrides):
    cfg = default_config().model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return build_model(cfg)


# torchvision parameter counts minus the 1000-way classifier (fc.weight + fc.bias).
TORCHVISION_PARAMS = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                      "resnet50": 25_557_032 - 2_049_000, "resnet101": 44_549_160 - 2_049_000}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_resnet_sizes_and_feature_map(name):
    model = model_for(backbone=name)
    images = jnp.zeros((2, 224, 224, 3), jnp.uint8)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    count = sum(x.size for x in jax.tree.leaves(variables["params"]["backbone"]))
    assert count == TORCHVISION_PARAMS[name]
    fmap = jax.eval_shape(lambda v: model.apply(v, model.normalize(images), method=lambda m, x: m.backbone(x)),
                          variables)
    assert fmap.shape == (2, 7, 7, 2048 if name in ("resnet50", "resnet101") else 512)
    names = set(variables["params"]["backbone"])
    assert {"conv1", "bn1", "layer1_0", "layer4_1"} <= names


@pytest.mark.parametrize("pooling", ["gap", "gmp", "gap+gmp"])
def test_embeddings_are_unit_vectors(pooling):
    model = model_for(pooling=pooling, embedding_dim=16, width=8)
    images = jax.random.randint(jax.random.key(1), (3, 16, 16, 3), 0, 256).astype(jnp.uint8)
    variables = model.init(jax.random.key(0), images)
    emb = model.apply(variables, images)["embedding"]
    assert emb.shape == (3, 16) and emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    images = jax.random.randint(jax.random.key(1), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    f32, bf16 = model_for(width=8), model_for(width=8, compute_dtype="bfloat16")
    variables = f32.init(jax.random.key(0), images)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.init(jax.random.key(0), images)))
    a, b = f32.apply(variables, images)["embedding"], bf16.apply(variables, images)["embedding"]
    assert b.dtype == jnp.float32
    assert np.min(np.sum(np.asarray(a) * np.asarray(b), axis=1)) > 0.99  # cosine similarity


@pytest.mark.parametrize("size", [224, 227])
def test_bninception_size_names_and_feature_map(size):
    # The pretrainedmodels port has 11,295,240 parameters, 1,025,000 of them in its classifier (last_linear).
    model = model_for(backbone="bninception")
    images = jnp.zeros((2, size, size, 3), jnp.uint8)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    backbone = variables["params"]["backbone"]
    assert sum(x.size for x in jax.tree.leaves(backbone)) == 11_295_240 - 1_025_000
    assert {"conv1_7x7_s2", "conv1_7x7_s2_bn", "inception_3c_double_3x3_2_bn", "inception_5b_pool_proj"} <= set(
        backbone)
    assert "inception_3c_1x1" not in backbone and "inception_4e_pool_proj" not in backbone  # stride-2 blocks
    fmap = jax.eval_shape(lambda v: model.apply(v, model.normalize(images), method=lambda m, x: m.backbone(x)),
                          variables)
    assert fmap.shape == (2, 7, 7, 1024)


@pytest.mark.parametrize("backbone", ["small_cnn", "bninception"])
def test_frozen_bn_uses_and_keeps_running_statistics(backbone):
    size = 16 if backbone == "small_cnn" else 64
    images = jax.random.randint(jax.random.key(1), (4, size, size, 3), 0, 256).astype(jnp.uint8)
    for freeze, changes in ((True, False), (False, True)):
        model = model_for(width=8, freeze_bn=freeze, backbone=backbone)
        variables = model.init(jax.random.key(0), images)
        _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
        assert any(jax.tree.leaves(moved)) == changes
