"""Backbones against their PyTorch originals, and the checkpoint conversion that connects them.

References: the ``pretrainedmodels`` BN-Inception port (its ``bninception.py``, loaded by path so that the
package's torchvision-importing ``__init__`` is not run) and torchvision's ResNets (skipped where torchvision
cannot be imported; see the README for the one-off environment that runs them).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models import backbones as bb
from jaxdml.models import convert

torch = pytest.importorskip("torch")


def _pretrainedmodels_bninception():
    spec = importlib.util.find_spec("pretrainedmodels")
    if spec is None:
        pytest.skip("pretrainedmodels is not installed (test extra)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "bninception.py"
    module_spec = importlib.util.spec_from_file_location("reference_bninception", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.BNInception


def _torchvision_models():
    try:
        import torchvision.models
    except Exception as error:  # a broken torchvision build raises RuntimeError at import
        pytest.skip(f"torchvision is not importable here ({type(error).__name__}); see README 'Backbones'")
    return torchvision.models


def _randomise_batch_norm(model, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that eval mode tests the running-statistics path."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _flax_features(arch: str, variables: dict, images_nhwc: np.ndarray, dtype=jnp.float32, pooled=False):
    module = bb.backbone_spec(arch).build(dtype)
    return np.asarray(module.apply(variables, jnp.asarray(images_nhwc), train=False, pooled=pooled), np.float32)


@pytest.mark.parametrize("size", [227, 224])
def test_bninception_matches_the_pytorch_port(size):
    reference = _pretrainedmodels_bninception()(num_classes=1000).eval()
    _randomise_batch_norm(reference, seed=size)
    variables, dropped = convert.convert_state_dict("bninception", _state_dict(reference))
    assert set(dropped) == {"last_linear.weight", "last_linear.bias"} | {
        k for k in reference.state_dict() if k.endswith("num_batches_tracked")}

    rgb = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    spec = bb.backbone_spec("bninception")
    bgr_minus_mean = rgb[..., ::-1].astype(np.float32) - np.asarray(bb.CAFFE_BGR_MEAN, np.float32)
    with torch.no_grad():
        expected = reference.features(torch.from_numpy(bgr_minus_mean.transpose(0, 3, 1, 2).copy())).numpy()
    assert expected.shape == (2, 1024, 7, 7)

    # Through the model's own normalisation: uint8 RGB -> Caffe BGR, 0-255, mean-subtracted.
    from jaxdml.models.model import Model

    normalize = Model(backbone=None, head=None, mean=spec.mean, std=spec.std, input_range=spec.input_range,
                      bgr=spec.bgr).normalize
    np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(rgb))), bgr_minus_mean, atol=1e-4)
    ours = _flax_features("bninception", variables, np.asarray(normalize(jnp.asarray(rgb))))
    assert _relative_error(ours, expected.transpose(0, 2, 3, 1)) < 1e-4

    pooled = _flax_features("bninception", variables, bgr_minus_mean, pooled=True)
    np.testing.assert_allclose(pooled, expected.mean(axis=(2, 3)), rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bninception_bfloat16_compute_keeps_float32_parameters():
    reference = _pretrainedmodels_bninception()(num_classes=1000).eval()
    _randomise_batch_norm(reference, seed=1)
    variables, _ = convert.convert_state_dict("bninception", _state_dict(reference))
    x = np.random.default_rng(1).normal(0.0, 50.0, (1, 224, 224, 3)).astype(np.float32)
    full = _flax_features("bninception", variables, x, pooled=True)
    half = _flax_features("bninception", variables, x, dtype=jnp.bfloat16, pooled=True)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
    cosine = float(np.dot(full[0], half[0]) / np.linalg.norm(full[0]) / np.linalg.norm(half[0]))
    assert cosine > 0.999, cosine


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision(arch):
    models = _torchvision_models()
    torch.manual_seed(0)
    reference = getattr(models, arch)(weights=None).eval()
    _randomise_batch_norm(reference, seed=3)
    variables, dropped = convert.convert_state_dict(arch, _state_dict(reference))
    assert {"fc.weight", "fc.bias"} <= set(dropped)
    x = np.random.default_rng(2).normal(size=(2, 224, 224, 3)).astype(np.float32)
    trunk = torch.nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        expected = trunk(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    ours = _flax_features(arch, variables, x)
    assert ours.shape == expected.shape
    assert _relative_error(ours, expected) < 1e-4
    np.testing.assert_allclose(_flax_features(arch, variables, x, pooled=True), expected.mean(axis=(1, 2)),
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# ----------------------------------------------------------------------------------------------- conversion


def _random_resnet18_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A complete torchvision-layout ResNet-18 state dict, made from our own module and exported."""
    module = bb.backbone_spec("resnet18").build(jnp.float32)
    variables = module.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.01, x.shape).astype(np.float32), variables)
    state = convert.export_state_dict("resnet18", variables)
    state["fc.weight"] = rng.normal(size=(1000, 512)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key.replace("running_var", "num_batches_tracked")] = np.asarray(7)
    return state


def test_export_then_convert_round_trips_every_leaf():
    state = _random_resnet18_state_dict()
    variables, dropped = convert.convert_state_dict("resnet18", state)
    again = convert.export_state_dict("resnet18", variables)
    assert set(again) | set(dropped) == set(state)
    for key, value in again.items():
        np.testing.assert_array_equal(value, state[key])
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)  # torchvision's name and OIHW layout
    assert variables["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)


def test_conversion_lists_missing_left_over_and_misfit_keys():
    state = _random_resnet18_state_dict()
    del state["layer1.0.bn1.running_mean"]
    state["layer9.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    state["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(convert.ConversionError) as error:
        convert.convert_state_dict("resnet18", state)
    message = str(error.value)
    assert "layer1.0.bn1.running_mean" in message and "lacks" in message
    assert "layer9.0.conv1.weight" in message and "left over" in message
    assert "conv1.weight: checkpoint (64, 3, 3, 3)" in message and "(7, 7, 3, 64)" in message
    with pytest.raises(convert.ConversionError, match="bninception"):
        convert.convert_state_dict("bninception", _random_resnet18_state_dict())


def test_wrapped_and_data_parallel_checkpoints_are_unwrapped(tmp_path):
    state = _random_resnet18_state_dict()
    wrapped = {"state_dict": {f"module.{k}": torch.from_numpy(np.asarray(v)) for k, v in state.items()},
               "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth.tar")
    read = convert.read_checkpoint(tmp_path / "ckpt.pth.tar")
    assert set(read) == set(state)
    variables, _ = convert.convert_state_dict("resnet18", read)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))


def test_command_line_writes_an_orbax_checkpoint_that_loads_back(tmp_path, capsys):
    state = _random_resnet18_state_dict()
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, tmp_path / "resnet18.pth")
    out = tmp_path / "converted"
    assert convert.main(["--arch", "resnet18", "--src", str(tmp_path / "resnet18.pth"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "11,176,512 parameters" in printed  # torchvision's 11,689,512 minus the 513,000 of the classifier
    meta = json.loads((out / convert.METADATA_FILE).read_text())
    assert meta["arch"] == "resnet18" and len(meta["sha256"]) == 64 and "fc.weight" in meta["dropped_keys"]
    loaded = convert.load_pretrained(out, "resnet18")
    expected, _ = convert.convert_state_dict("resnet18", state)
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)
    from_file = convert.load_pretrained(tmp_path / "resnet18.pth", "resnet18")
    jax.tree.map(np.testing.assert_array_equal, from_file, expected)
    with pytest.raises(convert.ConversionError, match="holds a resnet18 backbone"):
        convert.load_pretrained(out, "resnet50")
    with pytest.raises(convert.ConversionError, match=r"python -m jaxdml\.models\.convert"):
        convert.load_pretrained(tmp_path / "nowhere", "resnet18")
    assert convert.main(["--arch", "resnet34", "--src", str(tmp_path / "resnet18.pth"), "--out", str(out)]) == 1
    assert "not a resnet34" in capsys.readouterr().err


def test_training_starts_from_the_pretrained_backbone(tmp_path):
    from jaxdml.config import default_config
    from jaxdml.trainers import create_trainer

    state_dict = _random_resnet18_state_dict(seed=5)
    np.savez(tmp_path / "weights.npz", **state_dict)
    cfg = default_config()
    cfg.model.backbone = "resnet18"
    cfg.model.pretrained = str(tmp_path / "weights.npz")
    cfg.data.image_size = 32
    cfg.train.batch_size = 8
    trainer = create_trainer(cfg, tmp_path / "run")
    trainer.close()
    expected, _ = convert.convert_state_dict("resnet18", state_dict)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.state.params["backbone"]), expected["params"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.state.model_state["batch_stats"]["backbone"]),
                 expected["batch_stats"])

    cfg.model.backbone = "resnet34"
    with pytest.raises(convert.ConversionError, match="not a resnet34"):
        create_trainer(cfg, tmp_path / "run34")
