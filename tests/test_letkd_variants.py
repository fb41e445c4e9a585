"""Several distillation terms at once (distill.method = "fitnet+letkd", ...), the letKD supplement's ablation
variants (Tables 4-6) and the ImageNet pairs (Table 2): loss arithmetic, refusals, settings read back, networks
against their PyTorch originals, and an exact resume of a combined run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.config import ConfigError, load_config_file, validate
from jaxdml.distill.model import build_classifier, student_inserts
from jaxdml.distill.teacher import artefact_names, sample_images
from jaxdml.distill.terms import parse_method, terms_of
from jaxdml.trainers import Resume, create_trainer, resolve_config, train_and_evaluate
from jaxdml.trainers.distillation import distillation_loss

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
STUDENT = EXP / "kd_digits_student.py"


# ------------------------------------------------------------------------------------ the combined loss


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(target, scores):
    """mean over rows of sum_k t (log t - log softmax(s)) (0 log 0 = 0)."""
    logt = np.log(np.where(target > 0, target, 1.0))
    return np.mean(np.sum(target * (logt - _np_log_softmax(scores)), -1))


def test_combined_loss_is_the_weighted_sum_of_independently_computed_terms():
    rng = np.random.default_rng(0)
    b, classes, k, per_class, lda = 4, 5, 6, 2, 3
    cfg = load_config_file(f"{STUDENT}:letkd")
    d = cfg.distill
    d.method = "kd+fitnet+letkd"
    d.ce_weight, d.kd_weight, d.kd_temperature, d.fitnet_weight = 0.3, 0.7, 2.0, 3.0
    d.letkd.penultimate_weight, d.letkd.intermediate_weight, d.letkd.temperature = 0.4, 2.5, 1.5
    d.letkd.student_block, d.letkd.teacher_block, d.letkd.subclasses = "layer3_0", "layer3_0", per_class
    s = classes * per_class
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    labels = np.array([0, 3, 4, 1])
    out = {"logits": f32(b, classes), "hint": f32(b, 4, 4, 8),
           "scores": {"final": f32(b, 2, 2, k), "layer3_0": f32(b, 4, 4, s)}}
    teacher = {"logits": f32(b, classes),
               "features": {"layer2_0": f32(b, 4, 4, 8), "final": f32(b, 2, 2, 7), "layer3_0": f32(b, 4, 4, 9)}}
    scores = rng.random((s, s)).astype(np.float32)
    arts = {"codebook": f32(k, 7), "lda_mean": f32(9), "lda_scalings": f32(9, lda), "centres": f32(s, lda),
            "scores": scores / scores.sum(1, keepdims=True)}
    j = lambda tree: jax.tree.map(jnp.asarray, tree)
    total, metrics = distillation_loss(cfg, j(out), j(teacher), jnp.asarray(labels), j(arts))

    # Each term from its formula, in numpy.
    ce = -np.mean(_np_log_softmax(out["logits"])[np.arange(b), labels])
    t = d.kd_temperature
    p_t = np.exp(_np_log_softmax(teacher["logits"] / t))
    kd = t * t * _np_kl(p_t, out["logits"] / t)
    hint = np.mean((out["hint"] - teacher["features"]["layer2_0"]) ** 2)
    dist = ((teacher["features"]["final"][..., None, :] - arts["codebook"]) ** 2).sum(-1)
    pen = _np_kl(np.exp(_np_log_softmax(-dist / d.letkd.temperature)).reshape(-1, k),
                 out["scores"]["final"].reshape(-1, k))
    proj = (teacher["features"]["layer3_0"] - arts["lda_mean"]) @ arts["lda_scalings"]
    dist = ((proj[..., None, :] - arts["centres"]) ** 2).sum(-1)  # (b, 4, 4, s)
    own = np.repeat(np.eye(classes, dtype=bool)[labels], per_class, -1)[:, None, None, :]
    targets = arts["scores"][np.argmin(np.where(own, dist, np.inf), -1)]
    inter = _np_kl(targets.reshape(-1, s), out["scores"]["layer3_0"].reshape(-1, s))

    for name, value in {"ce": ce, "kd": kd, "hint": hint, "letkd_penultimate": pen,
                        "letkd_intermediate": inter}.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=2e-5, err_msg=name)
    expected = 0.3 * ce + 0.7 * kd + 3.0 * hint + 0.4 * pen + 2.5 * inter
    np.testing.assert_allclose(float(total), expected, rtol=2e-5)

    # ... and equals the single-term losses added up (each computed on its own config).
    singles = 0.0
    for method in ("kd", "fitnet", "letkd"):
        single = cfg.copy_and_resolve_references()
        single.distill.method = method
        single.distill.kd_weight = d.kd_weight if method == "kd" else 0.0
        loss, _ = distillation_loss(single, j(out), j(teacher), jnp.asarray(labels), j(arts))
        singles += float(loss) - 0.3 * ce
    np.testing.assert_allclose(float(total), 0.3 * ce + singles, rtol=2e-5)


def test_a_layer_with_weight_zero_is_inserted_but_not_supervised():
    cfg = load_config_file(f"{EXP / 'letkd_cifar100_rn110_rn32.py'}:table6_fitnet_layer")
    assert [i.after for i in student_inserts(cfg, 100)] == ["final"]
    assert artefact_names(cfg.distill) == []  # no codebook to compute
    cfg = load_config_file(f"{EXP / 'letkd_cifar100_rn110_rn32.py'}:table6_fitnet_letkd")
    assert artefact_names(cfg.distill) == ["codebook"]
    assert terms_of(cfg.distill) == ("fitnet", "letkd")


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("method", "setup", "message"), [
    ("letkd+fitnett", {}, r"unknown term\(s\) 'fitnett'.*fitnet\+letkd"),
    ("letkd+letkd", {}, r"repeats 'letkd'"),
    ("none+kd", {}, r"'none' cannot be combined"),
    ("letkd+", {}, r"empty term"),
    ("fitnet+kd", {"kd_weight": 0.0}, r"includes 'kd' but distill\.kd_weight=0\.0: set distill\.kd_weight > 0"),
    ("fitnet+letkd", {"fitnet_weight": 0.0}, r"distill\.fitnet_weight > 0"),
    ("fitnet+letkd", {"hint_block": ""}, r"set distill\.hint_block"),
    ("kd+letkd", {"letkd.penultimate": False, "letkd.intermediate": False}, r"penultimate and .*both False"),
])
def test_bad_combinations_are_refused_in_one_line(method, setup, message):
    cfg = load_config_file(f"{STUDENT}:kd")
    cfg.distill.method = method
    for key, value in setup.items():
        node = cfg.distill
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ConfigError, match=message) as info:
        resolve_config(cfg)
    assert "\n" not in str(info.value)


def test_single_methods_parse_as_before():
    assert parse_method("none") == ()
    assert parse_method("letkd") == ("letkd",)
    assert parse_method("fitnet+letkd") == ("fitnet", "letkd")
    cfg = load_config_file(f"{STUDENT}:letkd")
    cfg.distill.kd_weight = 0.5  # a positive kd_weight adds KD to any method, as before
    assert terms_of(cfg.distill) == ("letkd", "kd")


# ------------------------------------------------------------------------------ variants read back

# variant -> (penultimate, alpha_penult, intermediate, alpha_inter, paper top-1); supp. Table 5 (RN56 -> RN20).
TABLE5 = {"inter_a0": (False, None, True, 0.0, "70.64"), "inter_a1": (False, None, True, 1.0, "70.80"),
          "penult_a0": (True, 0.0, False, None, "71.84"), "penult_a1": (True, 1.0, False, None, "72.44"),
          "inter_a0_penult_a0": (True, 0.0, True, 0.0, "71.70"), "inter_a0_penult_a1": (True, 1.0, True, 0.0, "72.13"),
          "inter_a1_penult_a0": (True, 0.0, True, 1.0, "72.78"), "inter_a1_penult_a1": (True, 1.0, True, 1.0, "73.27"),
          "table4_alpha0": (True, 1.0, True, 0.0, "52.71"), "table4_alpha1": (True, 1.0, True, 1.0, "56.36")}
# variant -> (method, penultimate_weight, paper top-1); supp. Table 6 (RN110 -> RN32).
TABLE6 = {"table6_fitnet": ("fitnet", None, "71.59"), "table6_fitnet_layer": ("fitnet+letkd", 0.0, "71.80"),
          "table6_fitnet_letkd": ("fitnet+letkd", 1.0, "73.36")}


def _doc_line(path: Path, variant: str) -> str:
    doc = path.read_text().split('"""')[1]
    lines = [line for line in doc.splitlines() if line.strip().startswith(f"{variant}:")]
    assert len(lines) == 1, f"{path.name} lists {variant} {len(lines)} times"
    return lines[0]


@pytest.mark.parametrize("variant", sorted(TABLE5))
def test_table4_5_variants_are_valid_with_the_paper_settings(variant):
    path = EXP / "letkd_cifar100_rn56_rn20.py"
    cfg, _ = resolve_config(load_config_file(f"{path}:{variant}"))
    penult, a_penult, inter, a_inter, number = TABLE5[variant]
    ld = cfg.distill.letkd
    assert (cfg.distill.method, cfg.model.backbone, cfg.distill.teacher_arch) == ("letkd", "resnet20", "resnet56")
    assert (ld.penultimate, ld.intermediate) == (penult, inter)
    if penult:
        assert ld.penultimate_alpha == a_penult and ld.penultimate_weight == 1.0
    if inter:
        assert ld.intermediate_alpha == a_inter and ld.intermediate_weight == 1.0
        assert (ld.student_block, ld.teacher_block) == ("layer3_0", "layer3_0")
    assert (ld.num_words, ld.lda_dims, ld.subclasses) == (4096, 60, 8)
    assert number in _doc_line(path, variant)
    inserts = {i.after: i.alpha for i in student_inserts(cfg, 100)}
    assert inserts == {**({"final": a_penult} if penult else {}), **({"layer3_0": a_inter} if inter else {})}


@pytest.mark.parametrize("variant", sorted(TABLE6))
def test_table6_variants_are_valid_with_the_paper_settings(variant):
    path = EXP / "letkd_cifar100_rn110_rn32.py"
    cfg, _ = resolve_config(load_config_file(f"{path}:{variant}"))
    method, weight, number = TABLE6[variant]
    d = cfg.distill
    assert (d.method, cfg.model.backbone, d.teacher_arch) == (method, "resnet32", "resnet110")
    assert (d.hint_block, d.teacher_hint_block, d.fitnet_weight) == ("layer2_4", "layer2_17", 100.0)
    if weight is not None:
        assert (d.letkd.penultimate, d.letkd.intermediate, d.letkd.penultimate_weight) == (True, False, weight)
        assert d.letkd.penultimate_alpha == 1.0 and d.letkd.num_words == 4096
    assert number in _doc_line(path, variant)
    # The stage-2 outputs: layer2_4 is the last block of ResNet-32's stage 2 (5 blocks a stage).
    maps = jax.eval_shape(lambda: build_classifier(cfg, 100).init_with_output(
        jax.random.key(0), sample_images(cfg))[0])["features"]
    assert "layer2_4" in maps and "layer2_5" not in maps and maps["layer2_4"].shape[1:] == (16, 16, 32)


# --------------------------------------------------------------------------------------------- ImageNet

IMAGENET = {"letkd_imagenet_rn34_rn18.py": ("imagenet_resnet18", "imagenet_resnet34", ["72.38", "73.31", "69.75"]),
            "letkd_imagenet_rn50_mnv2.py": ("imagenet_mobilenet", "imagenet_resnet50", ["73.98", "76.13", "68.87"])}


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_configs_resolve_and_their_blocks_fit(name):
    path = EXP / name
    student, teacher, numbers = IMAGENET[name]
    doc = path.read_text().split('"""')[1]
    assert all(n in doc for n in numbers) and "Not measured here" in doc
    assert f"python -m jaxdml.main --config experiments/{name}" in doc
    for method in ("none", "kd", "fitnet", "letkd1", "letkd2"):
        cfg, _ = resolve_config(load_config_file(f"{path}:{method}"))
        assert (cfg.data.name, cfg.data.image_size, cfg.model.backbone) == ("imagenet2012", 224, student)
    assert cfg.train.num_steps == 5005 * 100 and cfg.optim.lr == 0.1
    assert cfg.optim.step_boundaries == (5005 * 30, 5005 * 60, 5005 * 90)
    d = cfg.distill
    assert (d.teacher_arch, d.method, d.letkd.penultimate_alpha, d.letkd.intermediate_alpha) == (teacher, "letkd",
                                                                                                  1.0, 1.0)

    def maps(arch, inserts=()):
        model = build_classifier(cfg, 1000, arch=arch, inserts=inserts)
        return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), sample_images(cfg))[0])

    s, t = maps(student, student_inserts(cfg, 1000)), maps(teacher)
    assert s["features"]["final"].shape[1:3] == t["features"]["final"].shape[1:3] == (7, 7)
    assert s["scores"]["final"].shape[-1] == 4096 and s["scores"][d.letkd.student_block].shape[-1] == 8000
    assert s["features"][d.letkd.student_block].shape[1:3] == t["features"][d.letkd.teacher_block].shape[1:3]
    fitnet = load_config_file(f"{path}:fitnet").distill
    assert s["features"][fitnet.hint_block].shape[1:3] == t["features"][fitnet.teacher_hint_block].shape[1:3]


def _randomise_bn(module):
    import torch

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module.eval()


def _release_mobilenet():
    """The release's MobileNetV2_ImageNet.MobileNet, transcribed (its forward: features, AvgPool2d(7), Linear)."""
    import torch.nn as tnn

    def conv_bn(inp, oup, stride):
        return tnn.Sequential(tnn.Conv2d(inp, oup, 3, stride, 1, bias=False), tnn.BatchNorm2d(oup), tnn.ReLU())

    def conv_dw(inp, oup, stride):
        return tnn.Sequential(tnn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), tnn.BatchNorm2d(inp),
                              tnn.ReLU(), tnn.Conv2d(inp, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup), tnn.ReLU())

    widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    net = tnn.Module()
    net.features = tnn.Sequential(conv_bn(3, 32, 2), *[conv_dw(*w) for w in widths])
    net.classifier = tnn.Sequential(tnn.AvgPool2d(7), tnn.Flatten(), tnn.Linear(1024, 1000))
    net.forward = lambda x: net.classifier(net.features(x))
    return net


@pytest.mark.parametrize(("arch", "size"), [("imagenet_resnet18", 64), ("imagenet_resnet50", 64),
                                            ("imagenet_mobilenet", 224)])
def test_imagenet_networks_match_their_pytorch_originals(arch, size, tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from jaxdml.models.convert import load_pretrained, main
    from jaxdml.models.imagenet import imagenet_network

    torch.manual_seed(0)
    net = _release_mobilenet() if arch == "imagenet_mobilenet" else getattr(
        torchvision.models, arch.removeprefix("imagenet_"))(weights=None)
    net = _randomise_bn(net)
    src = tmp_path / "weights.pth"
    torch.save(net.state_dict(), src)
    assert main(["--arch", arch, "--src", str(src), "--out", str(tmp_path / "converted")]) == 0
    variables = load_pretrained(tmp_path / "converted", arch)
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = imagenet_network(arch, 1000).apply(variables, jnp.asarray(x))["logits"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=2e-3)


def test_the_converter_refuses_a_checkpoint_of_another_network():
    from jaxdml.models.convert import ConversionError, convert_state_dict

    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ConversionError, match=r"not a imagenet_resnet34.*lacks.*layer3\.2"):
        convert_state_dict("imagenet_resnet34", state)


# -------------------------------------------------------------------------- a combined run resumes exactly


def _tiny(cfg, steps):
    cfg.train.num_steps, cfg.train.batch_size = steps, 32
    cfg.train.eval_every = cfg.train.checkpoint_every = steps
    cfg.train.log_every, cfg.train.progress_bar = 1, False
    cfg.optim.step_boundaries, cfg.optim.schedule = (), "constant"
    cfg.eval.batch_size = 500
    return cfg


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    cfg = _tiny(load_config_file(EXP / "kd_digits_teacher.py"), 2)
    cfg.model.backbone = "resnet8"
    workdir = tmp_path_factory.mktemp("teacher")
    train_and_evaluate(cfg, workdir)
    return workdir


def _combined(teacher_dir: Path, steps: int):
    cfg = _tiny(load_config_file(f"{STUDENT}:letkd"), steps)
    d = cfg.distill
    d.method, d.teacher_arch, d.teacher = "fitnet+letkd", "resnet8", str(teacher_dir)
    d.fitnet_weight, d.kd_weight = 2.0, 0.5  # FitNet + LeTKD (+ KD through kd_weight)
    d.letkd.num_words, d.letkd.lda_dims, d.letkd.subclasses = 8, 6, 2
    return validate(cfg)


def test_a_combined_run_trains_every_term_and_resumes_exactly(teacher_dir, tmp_path):
    straight = _combined(teacher_dir, 4)
    train_and_evaluate(straight, tmp_path / "straight")
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    for term in ("kd", "hint", "letkd_penultimate", "letkd_intermediate"):
        assert all(np.isfinite(r[term]) for r in rows), term
    half = _combined(teacher_dir, 2)
    half.train.eval_every = 4
    train_and_evaluate(half, tmp_path / "resumed")
    train_and_evaluate(straight, tmp_path / "resumed", resume=Resume(extend_steps=True))

    def state(workdir):
        trainer = create_trainer(straight, workdir)
        trainer.close()
        return jax.device_get(trainer.state)

    a, b = state(tmp_path / "straight"), state(tmp_path / "resumed")
    assert int(a.step) == int(b.step) == 4
    assert set(a.params) == {"backbone", "head"}  # the LeTKD layers and FitNet's regressor are both checkpointed
    assert {"letkd_final", "letkd_layer3_0"} <= set(a.params["backbone"])
    for part in ("params", "model_state", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(a, part), getattr(b, part))
    assert re.fullmatch(r"fitnet\+letkd", json.loads((tmp_path / "resumed" / "config.json").read_text())
                        ["distill"]["method"])
