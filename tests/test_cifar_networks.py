"""CIFAR classifiers of the KD code base: sizes, layouts, checkpoint conversion and equivalence.

References: torchdistill's ``resnet20/56`` (an independent implementation with the CRD layout, key for key),
the parameter counts the CRD paper publishes, and, for WRN (whose CRD pre-activation shortcut no installable
package reproduces), a literal torch transcription of the CRD ``wrn.py`` forward pass written in this file.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.models import convert
from jaxdml.models.cifar import CIFAR_NETWORKS, Insert, cifar_network

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Parameter counts with a 100-way classifier, as the CRD paper's table (millions, two decimals, not always
# rounded the same way: resnet110's 1,736,564 is listed as 1.73).
CRD_MILLIONS = {"resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.73, "resnet8x4": 1.23, "resnet32x4": 7.43,
                "wrn_40_2": 2.26, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "mobilenetv2": 0.81, "shufflev1": 0.95,
                "shufflev2": 1.36, "cifar_resnet50": 23.71}


def _count(arch: str, num_classes: int = 100) -> int:
    shapes = convert.backbone_shapes(arch, num_classes)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def _wrn_count(depth: int, k: int, classes: int = 100) -> int:
    """WRN parameters from its definition: stem, 3 stages of (BN, 3x3, BN, 3x3, [1x1]), BN, fc."""
    n, total, cin = (depth - 4) // 6, 3 * 3 * 3 * 16, 16
    for stage in range(3):
        cout = 16 * 2**stage * k
        for j in range(n):
            c = cin if j == 0 else cout
            total += 2 * c + 9 * c * cout + 2 * cout + 9 * cout * cout + (c * cout if c != cout else 0)
        cin = cout
    return total + 2 * cin + cin * classes + classes


@pytest.mark.parametrize("arch", sorted(CRD_MILLIONS))
def test_sizes_match_the_published_counts(arch):
    count = _count(arch)
    assert abs(count / 1e6 - CRD_MILLIONS[arch]) < 0.01
    if arch.startswith("wrn_"):
        depth, k = (int(v) for v in arch[4:].split("_"))
        assert count == _wrn_count(depth, k)


def _randomise(variables, seed):
    """Random parameters and BN statistics (positive variances)."""
    rng = np.random.default_rng(seed)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    out = {}
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name.endswith("['scale']"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0, 0.1, leaf.shape)
        out[name] = value.astype(np.float32)
    return jax.tree_util.tree_map_with_path(lambda p, _: out[jax.tree_util.keystr(p)], variables)


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_cifar_resnet_matches_torchdistill(arch):
    if importlib.util.find_spec("torchdistill") is None:
        pytest.skip("torchdistill is not installed (test extra)")
    try:
        from torchdistill.models.classification import resnet
    except Exception as error:  # torchdistill needs an importable torchvision
        pytest.skip(f"torchdistill is not importable: {error}")
    torch.manual_seed(0)
    reference = getattr(resnet, arch)(num_classes=100).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    variables, dropped = convert.convert_state_dict(arch, {"model": state, "epoch": 240})  # CRD checkpoint form
    assert all(k.endswith("num_batches_tracked") for k in dropped)  # the classifier is kept
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    out = cifar_network(arch, 100).apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out["logits"]), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert out["features"]["final"].shape == (4, 8, 8, 64) and out["features"]["layer3_0"].shape == (4, 8, 8, 64)


def _crd_wrn_forward(state: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """The CRD ``wrn.py`` forward, transcribed with torch.nn.functional (eval mode)."""
    def bn(prefix, t):
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)

    out = F.conv2d(x, state["conv1.weight"], padding=1)
    n = (depth - 4) // 6
    for stage in (1, 2, 3):
        for j in range(n):
            p = f"block{stage}.layer.{j}"
            stride = 2 if stage > 1 and j == 0 else 1
            equal = f"{p}.convShortcut.weight" not in state
            if not equal:
                out = F.relu(bn(f"{p}.bn1", out))
                y = out
            else:
                y = F.relu(bn(f"{p}.bn1", out))
            y = F.relu(bn(f"{p}.bn2", F.conv2d(y, state[f"{p}.conv1.weight"], stride=stride, padding=1)))
            y = F.conv2d(y, state[f"{p}.conv2.weight"], padding=1)
            shortcut = out if equal else F.conv2d(out, state[f"{p}.convShortcut.weight"], stride=stride)
            out = shortcut + y
    out = F.relu(bn("bn1", out))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("arch", ["wrn_16_2", "wrn_40_1"])
def test_wrn_matches_the_crd_forward(arch):
    net = cifar_network(arch, 100)
    variables = _randomise(net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))), seed=1)
    exported = convert.export_state_dict(arch, variables)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in exported.items()}
    assert ("block1.layer.0.convShortcut.weight" in state) == (arch == "wrn_16_2")  # 16 -> 32 channels at once
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    expected = _crd_wrn_forward(state, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), int(arch.split("_")[1]))
    logits = np.asarray(net.apply(variables, jnp.asarray(x))["logits"])
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4 * np.abs(expected.numpy()).max())
    again, _ = convert.convert_state_dict(arch, {k: v.numpy() for k, v in state.items()})
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, variables))


def _bn(state, prefix, t):
    return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)


def _shuffle(t, groups):
    n, c, h, w = t.shape
    return t.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _crd_mobilenetv2_forward(state, x):
    """The CRD ``mobilenetv2.py`` forward (mobile_half), transcribed with torch.nn.functional."""
    out = F.relu(_bn(state, "conv1.1", F.conv2d(x, state["conv1.0.weight"], stride=2, padding=1)))
    strides = {0: 1, 1: 1, 2: 2, 3: 2, 4: 1, 5: 2, 6: 1}
    for i in range(7):
        j = 0
        while f"blocks.{i}.{j}.conv.0.weight" in state:
            p, stride = f"blocks.{i}.{j}.conv", strides[i] if j == 0 else 1
            y = F.relu(_bn(state, f"{p}.1", F.conv2d(out, state[f"{p}.0.weight"])))
            y = F.relu(_bn(state, f"{p}.4", F.conv2d(y, state[f"{p}.3.weight"], stride=stride, padding=1,
                                                      groups=y.shape[1])))
            y = _bn(state, f"{p}.7", F.conv2d(y, state[f"{p}.6.weight"]))
            out = out + y if stride == 1 and out.shape[1] == y.shape[1] else y
            j += 1
    out = F.relu(_bn(state, "conv2.1", F.conv2d(out, state["conv2.0.weight"])))
    out = F.avg_pool2d(out, 2, ceil_mode=True).flatten(1)
    return F.linear(out, state["classifier.0.weight"], state["classifier.0.bias"])


def _crd_shufflev1_forward(state, x):
    """The CRD ``ShuffleNetv1.py`` forward (groups 3), transcribed."""
    out = F.relu(_bn(state, "bn1", F.conv2d(x, state["conv1.weight"])))
    for stage in (1, 2, 3):
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in state:
            p, stride = f"layer{stage}.{j}", 2 if j == 0 else 1
            g1 = 1 if out.shape[1] == 24 else 3
            y = F.relu(_bn(state, f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"], groups=g1)))
            y = _shuffle(y, g1)
            y = F.relu(_bn(state, f"{p}.bn2", F.conv2d(y, state[f"{p}.conv2.weight"], stride=stride, padding=1,
                                                        groups=y.shape[1])))
            y = _bn(state, f"{p}.bn3", F.conv2d(y, state[f"{p}.conv3.weight"], groups=3))
            out = F.relu(torch.cat([y, F.avg_pool2d(out, 3, stride=2, padding=1)], 1) if stride == 2 else y + out)
            j += 1
    return F.linear(F.avg_pool2d(out, 4).flatten(1), state["linear.weight"], state["linear.bias"])


def _crd_shufflev2_forward(state, x):
    """The CRD ``ShuffleNetv2.py`` forward (net size 1), transcribed."""
    out = F.relu(_bn(state, "bn1", F.conv2d(x, state["conv1.weight"])))
    for stage in (1, 2, 3):
        p = f"layer{stage}.0"
        left = _bn(state, f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"], stride=2, padding=1,
                                               groups=out.shape[1]))
        left = F.relu(_bn(state, f"{p}.bn2", F.conv2d(left, state[f"{p}.conv2.weight"])))
        right = F.relu(_bn(state, f"{p}.bn3", F.conv2d(out, state[f"{p}.conv3.weight"])))
        right = _bn(state, f"{p}.bn4", F.conv2d(right, state[f"{p}.conv4.weight"], stride=2, padding=1,
                                                groups=right.shape[1]))
        right = F.relu(_bn(state, f"{p}.bn5", F.conv2d(right, state[f"{p}.conv5.weight"])))
        out = _shuffle(torch.cat([left, right], 1), 2)
        j = 1
        while f"layer{stage}.{j}.conv1.weight" in state:
            p = f"layer{stage}.{j}"
            c = out.shape[1] // 2
            keep, y = out[:, :c], out[:, c:]
            y = F.relu(_bn(state, f"{p}.bn1", F.conv2d(y, state[f"{p}.conv1.weight"])))
            y = _bn(state, f"{p}.bn2", F.conv2d(y, state[f"{p}.conv2.weight"], padding=1, groups=y.shape[1]))
            y = F.relu(_bn(state, f"{p}.bn3", F.conv2d(y, state[f"{p}.conv3.weight"])))
            out = _shuffle(torch.cat([keep, y], 1), 2)
            j += 1
    out = F.relu(_bn(state, "bn2", F.conv2d(out, state["conv2.weight"])))
    return F.linear(F.avg_pool2d(out, 4).flatten(1), state["linear.weight"], state["linear.bias"])


def _crd_resnet50_forward(state, x):
    """The CRD ``resnetv2.py`` ResNet50 forward, transcribed."""
    out = F.relu(_bn(state, "bn1", F.conv2d(x, state["conv1.weight"], padding=1)))
    for stage in (1, 2, 3, 4):
        j = 0
        while f"layer{stage}.{j}.conv1.weight" in state:
            p, stride = f"layer{stage}.{j}", 2 if stage > 1 and j == 0 else 1
            y = F.relu(_bn(state, f"{p}.bn1", F.conv2d(out, state[f"{p}.conv1.weight"])))
            y = F.relu(_bn(state, f"{p}.bn2", F.conv2d(y, state[f"{p}.conv2.weight"], stride=stride, padding=1)))
            y = _bn(state, f"{p}.bn3", F.conv2d(y, state[f"{p}.conv3.weight"]))
            shortcut = out
            if f"{p}.shortcut.0.weight" in state:
                shortcut = _bn(state, f"{p}.shortcut.1", F.conv2d(out, state[f"{p}.shortcut.0.weight"], stride=stride))
            out = F.relu(y + shortcut)
            j += 1
    return F.linear(F.adaptive_avg_pool2d(out, 1).flatten(1), state["linear.weight"], state["linear.bias"])


@pytest.mark.parametrize(("arch", "forward"), [("cifar_resnet50", _crd_resnet50_forward),
                                               ("mobilenetv2", _crd_mobilenetv2_forward),
                                               ("shufflev1", _crd_shufflev1_forward),
                                               ("shufflev2", _crd_shufflev2_forward)])
def test_mobile_networks_match_the_crd_forward(arch, forward):
    net = cifar_network(arch, 100)
    variables = _randomise(net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))), seed=2)
    exported = convert.export_state_dict(arch, variables)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in exported.items()}
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = forward(state, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    logits = np.asarray(net.apply(variables, jnp.asarray(x))["logits"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    again, _ = convert.convert_state_dict(arch, exported)
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, variables))


def test_inserts_put_letkd_layers_and_template_blocks_into_the_network():
    inserts = (Insert("layer3_0", "letkd", 40, alpha=0.2), Insert("final", "letkd", 64),
               Insert("layer2_0", "template", 10))
    net = cifar_network("resnet20", 10, inserts=inserts)
    variables = net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    assert {"letkd_layer3_0", "letkd_final", "template_layer2_0"} <= set(variables["params"])
    out = net.apply(variables, jnp.zeros((2, 32, 32, 3)))
    assert out["scores"]["layer3_0"].shape == (2, 8, 8, 40) and out["scores"]["final"].shape == (2, 8, 8, 64)
    assert out["scores"]["layer2_0"].shape == (2, 16, 16, 10)
    with pytest.raises(ValueError, match="unknown block"):
        cifar_network("resnet20", 10, inserts=(Insert("layer4_0", "letkd", 8),)).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_every_network_builds_and_classifies():
    for arch in sorted(CIFAR_NETWORKS):
        out = jax.eval_shape(lambda a=arch: cifar_network(a, 7).init_with_output(
            jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[0])
        assert out["logits"].shape == (2, 7), arch
