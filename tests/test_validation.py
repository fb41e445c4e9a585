"""Every bad value is refused before any work: one line naming the key, the value, the rule and a valid value.

The table below holds at least one bad value per rule family of ``jaxdml.config`` (counts, non-negative
integers, ranges, pairs, increasing tuples, types, choices, rules between keys, loss and miner
hyper-parameters); the subprocess tests check that the command line prints one line, exits 1 or 2 and leaves
the workdir alone, and that loss hyper-parameters the experiment does not set can be set with flags.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from jaxdml.config import CHOICES, RULES, ConfigError, default_config, load_config_file, rule_of
from jaxdml.trainers import resolve_config

REPO = Path(__file__).resolve().parents[1]
DIGIT_PAIRS = REPO / "experiments" / "digit_pairs.py"
GSP = {"model.pooling": "gsp"}


def configured(overrides: dict) -> ml_collections.ConfigDict:
    """digit_pairs with ``overrides`` (dotted keys), without ConfigDict's type checks, so that values of the wrong
    type reach validation as they can from a hand-built config."""
    tree = load_config_file(DIGIT_PAIRS).to_dict()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return ml_collections.ConfigDict(tree, type_safe=False)


# (overrides, text the message must contain). The first override is the bad value unless the text says otherwise.
BAD = [
    # counts: >= 1
    ({"train.log_every": 0}, "train.log_every=0 must be >= 1; e.g. train.log_every=1."),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every=0 must be >= 1"),
    ({"train.eval_every": 0}, "train.eval_every=0"),
    ({"train.keep_checkpoints": 0}, "train.keep_checkpoints=0"),
    ({"eval.batch_size": 0}, "eval.batch_size=0 must be >= 1"),
    ({"train.num_steps": -5}, "train.num_steps=-5 must be >= 1; e.g. train.num_steps=1."),
    ({"train.num_steps": 0}, "train.num_steps=0"),
    ({"train.batch_size": 0}, "train.batch_size=0"),
    ({"train.batch_size": -8}, "train.batch_size=-8"),
    ({"data.samples_per_class": 0}, "data.samples_per_class=0"),
    ({"data.super_classes_per_batch": 0}, "data.super_classes_per_batch=0"),
    ({"data.image_size": 0}, "data.image_size=0"),
    ({"data.resize_size": -1}, "data.resize_size=-1"),
    ({"model.embedding_dim": 0}, "model.embedding_dim=0"),
    ({"model.width": 0}, "model.width=0"),
    ({"model.gsp.num_prototypes": 0, **GSP}, "model.gsp.num_prototypes=0"),
    ({"distill.letkd.num_words": 0}, "distill.letkd.num_words=0"),
    ({"distill.letkd.lda_dims": 0}, "distill.letkd.lda_dims=0"),
    ({"distill.letkd.subclasses": 0}, "distill.letkd.subclasses=0"),
    ({"distill.letkd.max_points": 0}, "distill.letkd.max_points=0"),
    ({"distill.template.templates_per_class": 0}, "distill.template.templates_per_class=0"),
    # non-negative integers
    ({"seed": -1}, "seed=-1 must be >= 0"),
    ({"data.num_workers": -1}, "data.num_workers=-1"),
    ({"data.crop_padding": -2}, "data.crop_padding=-2"),
    ({"optim.warmup_steps": -1}, "optim.warmup_steps=-1"),
    ({"optim.freeze_backbone_steps": -1}, "optim.freeze_backbone_steps=-1"),
    ({"train.patience": -1}, "train.patience=-1"),
    ({"loss.xbm.batches": -1}, "loss.xbm.batches=-1"),
    ({"loss.xbm.start_step": -1}, "loss.xbm.start_step=-1"),
    ({"model.gsp.memory_size": -1, **GSP}, "model.gsp.memory_size=-1"),
    # ranges of real numbers
    ({"model.gsp.gamma": 0.0, **GSP}, "model.gsp.gamma=0.0 must be > 0; e.g. model.gsp.gamma=5.0."),
    ({"model.gsp.gamma": -1.0, **GSP}, "model.gsp.gamma=-1.0 must be > 0"),
    ({"model.gsp.transport_ratio": 0.0, **GSP}, "model.gsp.transport_ratio=0.0 must be in (0, 1]"),
    ({"model.gsp.transport_ratio": 1.5, **GSP}, "e.g. model.gsp.transport_ratio=1.0."),
    ({"loss.zsr.weight": 1.0, **GSP}, "loss.zsr.weight=1.0 must be in [0, 1)"),
    ({"loss.zsr.weight": -0.1, **GSP}, "loss.zsr.weight=-0.1"),
    ({"loss.zsr.ridge": 0.0}, "loss.zsr.ridge=0.0 must be > 0"),
    ({"loss.zsr.scale": -1.0}, "loss.zsr.scale=-1.0"),
    ({"loss.weight": -1.0}, "loss.weight=-1.0 must be >= 0"),
    ({"optim.lr": 0.0}, "optim.lr=0.0 must be > 0"),
    ({"optim.lr": -1e-3}, "optim.lr=-0.001"),
    ({"optim.lr": math.nan}, "optim.lr=nan must be a finite number > 0"),
    ({"optim.lr": math.inf}, "optim.lr=inf must be a finite number"),
    ({"optim.weight_decay": -1e-4}, "optim.weight_decay=-0.0001 must be >= 0"),
    ({"optim.momentum": 1.0}, "optim.momentum=1.0 must be in [0, 1)"),
    ({"optim.b1": -0.1}, "optim.b1=-0.1"),
    ({"optim.b2": 1.0}, "optim.b2=1.0"),
    ({"optim.grad_clip_norm": -1.0}, "optim.grad_clip_norm=-1.0 must be >= 0"),
    ({"optim.step_factor": 0.0}, "optim.step_factor=0.0 must be > 0"),
    ({"optim.lr_mult.backbone": -1.0}, "optim.lr_mult.backbone=-1.0 must be >= 0"),
    ({"optim.lr_mult.loss": math.inf}, "optim.lr_mult.loss=inf"),
    ({"data.val_fraction": 1.0}, "data.val_fraction=1.0 must be in [0, 1)"),
    ({"data.rotation_degrees": -5.0}, "data.rotation_degrees=-5.0 must be in [0, 180]"),
    ({"distill.kd_temperature": 0.0}, "distill.kd_temperature=0.0 must be > 0"),
    ({"distill.letkd.temperature": -1.0}, "distill.letkd.temperature=-1.0"),
    ({"distill.letkd.penultimate_alpha": -0.5}, "distill.letkd.penultimate_alpha=-0.5"),
    ({"distill.kd_weight": -0.5}, "distill.kd_weight=-0.5"),
    ({"distill.template.weight": -1.0}, "distill.template.weight=-1.0"),
    # pairs (lo, hi) and increasing tuples
    ({"data.crop_area": (0.0, 1.0)}, "data.crop_area=(0.0, 1.0) must be a pair (lo, hi) with lo <= hi, both in (0, 1]"),
    ({"data.crop_area": (0.5, 0.2)}, "e.g. data.crop_area=(0.2, 0.5)."),
    ({"data.crop_area": (0.1, 1.5)}, "e.g. data.crop_area=(0.1, 1.0)."),
    ({"data.crop_area": (0.5,)}, "data.crop_area=(0.5,)"),
    ({"data.crop_aspect": (0.0, 1.0)}, "data.crop_aspect=(0.0, 1.0)"),
    ({"data.crop_aspect": (2.0, 1.0)}, "data.crop_aspect=(2.0, 1.0)"),
    ({"eval.ks": (0, 1)}, "eval.ks=(0, 1) must be a tuple of integers >= 1 in increasing order; e.g. eval.ks=(1,)."),
    ({"eval.ks": (4, 2)}, "e.g. eval.ks=(2, 4)."),
    ({"eval.ks": (1, 1)}, "eval.ks=(1, 1)"),
    ({"optim.step_boundaries": (5, 3), "optim.schedule": "step"}, "optim.step_boundaries=(5, 3)"),
    ({"optim.step_boundaries": (0,)}, "optim.step_boundaries=(0,)"),
    # types
    ({"train.log_every": 2.5}, "train.log_every=2.5 must be an integer >= 1"),
    ({"train.batch_size": "64"}, "train.batch_size='64' must be an integer"),
    ({"train.num_steps": True}, "train.num_steps=True must be an integer"),
    ({"optim.lr": "fast"}, "optim.lr='fast' must be a number > 0; e.g. optim.lr=0.001."),
    ({"model.width": None}, "model.width=None must be an integer"),
    ({"eval.ks": (1, 2.5)}, "eval.ks=(1, 2.5) must be a tuple of integers"),
    ({"eval.ks": "1,2"}, "eval.ks='1,2'"),
    ({"data.flip": "yes"}, "data.flip='yes' must be True or False"),
    ({"data.data_dir": 3}, "data.data_dir=3 must be a string or None"),
    ({"model.pooling": 1}, "model.pooling=1"),
    ({"loss.kwargs": 3}, "loss.kwargs=3 must be a dict"),
    # closed sets of names
    ({"model.pooling": "foo"}, "model.pooling='foo' is not one of: gap, gmp, gap+gmp, gsp, xbml, cbam, crow, delf, "
                                   "gem, gsop, netvlad, otp, soap, weldon."),
    ({"model.pooling": "gps"}, "Did you mean: gsp"),
    ({"data.name": "foo"}, "data.name='foo' is not one of: digit_pairs, digit_collage, digit_numbers, "),
    ({"data.name": "digit_pair"}, "Did you mean: digit_pairs"),
    ({"loss.name": "foo"}, "loss.name='foo' is not one of: contrastive, "),
    ({"loss.name": "contrastiv"}, "Did you mean: contrastive"),
    ({"model.backbone": "foo"}, "model.backbone='foo' is not one of: small_cnn, "),
    ({"model.backbone": "resnt50"}, "Did you mean: resnet50"),
    ({"optim.name": "foo"}, "optim.name='foo' is not one of: adam, adamw, sgd, rmsprop."),
    ({"optim.name": "adamm"}, "Did you mean: adam"),
    ({"optim.schedule": "linear"}, "optim.schedule='linear'"),
    ({"data.sampler": "m_per_clas"}, "data.sampler='m_per_clas'"),
    ({"data.augment": "flip"}, "data.augment='flip'"),
    ({"model.gsp.method": "sinkhorn", **GSP}, "model.gsp.method='sinkhorn'"),
    ({"model.compute_dtype": "float16"}, "model.compute_dtype='float16'"),
    ({"eval.evaluator": "knn"}, "eval.evaluator='knn'"),
    ({"loss.miner.name": "hard"}, "loss.miner.name='hard'"),
    ({"distill.teacher_arch": "resnet9"}, "distill.teacher_arch='resnet9'"),
    ({"trainer": "metric_learnin"}, "trainer='metric_learnin'"),
    ({"eval.selection_metric": "map_at_rr"}, "eval.selection_metric='map_at_rr' is not one of"),
    ({"eval.selection_metric": "recall_at_16"}, "eval.selection_metric='recall_at_16'"),
    # rules between keys
    ({"train.batch_size": 30}, "train.batch_size=30 is not a multiple of data.samples_per_class=4; e.g. "
                               "train.batch_size=28."),
    ({"train.batch_size": 2}, "e.g. train.batch_size=4."),
    ({"data.sampler": "hierarchical", "data.super_classes_per_batch": 3}, "train.batch_size=64 is not a multiple"),
    ({"data.resize_size": 16}, "data.resize_size=16 must be >= data.image_size=32"),
    ({"model.gsp.memory_size": 8, **GSP}, "model.gsp.memory_size=8 must be >= model.gsp.num_prototypes=64"),
    ({"loss.zsr.weight": 0.1}, "loss.zsr.weight=0.1 needs model.pooling='gsp'"),
    ({"optim.step_boundaries": (100, 500)}, "optim.step_boundaries=(100, 500) must lie within (optim.warmup_steps=0, "
                                            "train.num_steps=400); e.g. optim.step_boundaries=(100,)."),
    ({"optim.step_boundaries": (50, 100), "optim.warmup_steps": 50}, "optim.step_boundaries=(50, 100)"),
    ({"model.pretrained": "weights/x"}, "model.pretrained"),
    ({"loss.name": "n_pairs", "loss.kwargs": {}, "loss.xbm.batches": 2}, "loss.xbm.batches=0"),
    # loss and miner hyper-parameters, against the functions' signatures
    ({"loss.kwargs.nonsense": 1}, "loss.kwargs.nonsense: loss 'contrastive' has no hyper-parameter 'nonsense'. Its "
                                  "hyper-parameters: pos_margin, neg_margin, distance, reduction, normalize."),
    ({"loss.kwargs.pos_margn": 0.1}, "Did you mean: pos_margin"),
    ({"loss.kwargs.pos_margin": "a"}, "loss.kwargs.pos_margin='a' must be a finite number"),
    ({"loss.kwargs.pos_margin": math.nan}, "loss.kwargs.pos_margin=nan"),
    ({"loss.kwargs.distance": "cosin"}, "distance must be 'euclidean' or 'cosine'"),
    ({"loss.name": "triplet_margin", "loss.kwargs": {"swap": 1}}, "loss.kwargs.swap=1 must be True or False"),
    ({"loss.name": "triplet_margin", "loss.kwargs": {}, "loss.kwargs.triplets_per_anchor": 5},
     "loss.kwargs.triplets_per_anchor=5 must be a string"),
    ({"loss.name": "margin", "loss.kwargs": {"num_classes": 2.5}}, "loss.kwargs.num_classes=2.5 must be an integer"),
    ({"loss.name": "n_pairs", "loss.kwargs": {"margin": 0.1}}, "Its hyper-parameters: none."),
    ({"loss.miner.kwargs.epsilon": 0.1}, "loss.miner.kwargs is set but loss.miner.name is empty"),
    ({"loss.miner.name": "triplet_margin", "loss.miner.kwargs.type_of_triplets": "semi"},
     "loss.miner.kwargs.type_of_triplets='semi' is not one of: all, hard, semihard, easy"),
    ({"loss.miner.name": "multi_similarity", "loss.miner.kwargs.margin": 0.1},
     "loss.miner.kwargs.margin: miner 'multi_similarity' has no hyper-parameter 'margin'"),
    ({"loss.extra_terms.proxy": {"name": "proxy_ancor"}}, "loss.extra_terms.proxy.name='proxy_ancor'"),
    ({"loss.extra_terms.proxy": {"loss": "proxy_anchor"}}, "loss.extra_terms.proxy must be a dict with keys name"),
    ({"loss.extra_terms.proxy": {"name": "proxy_anchor", "weight": -1.0}}, "loss.extra_terms.proxy.weight=-1.0"),
    ({"loss.extra_terms.proxy": {"name": "proxy_anchor", "kwargs": {"alpa": 32.0}}},
     "loss.extra_terms.proxy.kwargs.alpa: loss 'proxy_anchor' has no hyper-parameter 'alpa'. Did you mean: alpha?"),
    ({"loss.extra_terms.proxy": {"name": "proxy_anchor", "kwargs": {"alpha": "32"}}},
     "loss.extra_terms.proxy.kwargs.alpha='32' must be a finite number"),
]


def _id(case) -> str:
    overrides, _ = case
    key, value = next(iter(overrides.items()))
    return f"{key}={value!r}"


@pytest.mark.parametrize("overrides, expected", BAD, ids=[_id(c) for c in BAD])
def test_bad_value_is_refused_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as error:
        resolve_config(configured(overrides))
    message = str(error.value)
    assert "\n" not in message, "one line"
    key = next(iter(overrides)).rsplit(".kwargs.", 1)[0]
    assert key.split(".")[0] in message
    assert expected in message, message


def _suggestion(message: str):
    """The ``e.g. key=value`` of a message, as (key, value)."""
    match = re.search(r"e\.g\. ([\w.]+)=(.+)\.$", message)
    return (match.group(1), ast.literal_eval(match.group(2))) if match else None


@pytest.mark.parametrize("overrides, expected", [c for c in BAD if "kwargs" not in json.dumps(c[0], default=str)],
                         ids=[_id(c) for c in BAD if "kwargs" not in json.dumps(c[0], default=str)])
def test_suggested_value_is_valid(overrides, expected):
    """The value a message suggests fixes the key it names (checked where it names one)."""
    with pytest.raises(ConfigError) as error:
        resolve_config(configured(overrides))
    suggestion = _suggestion(str(error.value))
    if suggestion is None:
        return
    key, value = suggestion
    try:
        resolve_config(configured({**overrides, key: value}))
    except ConfigError as second:
        assert not str(second).startswith(f"{key}="), f"{key}={value!r} suggested, but: {second}"


def test_every_key_has_a_rule():
    """Numbers and tuples have a range in RULES; strings with a closed set of values are in CHOICES; the rest of
    the strings are free-form (paths, block names) or checked by the trainers."""
    free_form = {"trainer", "distill.method", "eval.selection_metric", "distill.hint_block",
                 "distill.teacher_hint_block", "distill.letkd.student_block", "distill.letkd.teacher_block",
                 "distill.template.block"}
    flat = {}

    def walk(cfg, prefix=""):
        for key, value in cfg.items():
            if isinstance(value, ml_collections.ConfigDict) and key not in ("kwargs", "extra_terms"):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(default_config())
    for key, value in flat.items():
        if isinstance(value, bool) or value is None or isinstance(value, ml_collections.ConfigDict):
            continue
        if isinstance(value, (int, float, tuple)):
            assert key in RULES, f"{key} has no range in jaxdml.config.RULES"
        elif isinstance(value, str):
            assert key in CHOICES or key in free_form, f"{key}: add its allowed values to CHOICES"
        rule_of(key, value).check(key, value, value)  # the default satisfies its own rule
    assert set(RULES) <= set(flat) and set(CHOICES) <= set(flat)


EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*.py") if not p.name.startswith("_"))
VARIANTS = {"kd_digits_student.py": ("none", "kd", "letkd", "template")}
LETKD_METHODS = ("none", "kd", "fitnet", "letkd1", "letkd2")


def _variants():
    for path in EXPERIMENTS:
        methods = LETKD_METHODS if path.name.startswith("letkd_") else VARIANTS.get(path.name)
        yield from (f"{path}:{m}" for m in methods) if methods else [str(path)]


@pytest.mark.parametrize("spec", list(_variants()), ids=lambda s: Path(s).name)
def test_every_experiment_passes_the_rules(spec):
    resolve_config(load_config_file(spec))


# ------------------------------------------------------------------------------------------------ command line

def _run(args, cwd=REPO, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)


def _one_error_line(result) -> str:
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.parametrize("flags, expected", [
    (["--config.train.log_every=0"], "train.log_every=0 must be >= 1"),
    (["--config.train.num_steps=-5"], "train.num_steps=-5 must be >= 1"),
    (["--config.model.pooling=gsp", "--config.model.gsp.gamma=0"], "model.gsp.gamma=0.0 must be > 0"),
    (["--config.eval.selection_metric=map_at_rr"], "Did you mean: map_at_r?"),
    (["--config.loss.kwargs.nonsense=1"], "has no hyper-parameter 'nonsense'"),
    (["--config.train.log_every=0.5"], "train.log_every=0.5 must be an integer >= 1; e.g. train.log_every=1."),
], ids=["log_every", "num_steps", "gsp_gamma", "selection_metric", "loss_kwarg", "float_count"])
def test_command_line_refuses_before_writing_anything(tmp_path, flags, expected):
    workdir = tmp_path / "w"
    result = _run(["-m", "jaxdml.main", f"--config={DIGIT_PAIRS}", f"--workdir={workdir}", *flags])
    assert expected in _one_error_line(result)
    assert not workdir.exists(), f"wrote {sorted(p.name for p in workdir.iterdir())}"


def test_existing_workdir_is_left_empty(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    result = _run(["-m", "jaxdml.main", f"--config={DIGIT_PAIRS}", f"--workdir={workdir}",
                   "--config.eval.batch_size=0"])
    assert "eval.batch_size=0" in _one_error_line(result)
    assert list(workdir.iterdir()) == []


SHOW_CONFIG = """
import json, sys
from jaxdml.cli import config_from_flags, parse_flags
from jaxdml.trainers import resolve_config
parse_flags(sys.argv)
cfg = config_from_flags()
resolve_config(cfg)
print(json.dumps(cfg.loss.to_dict()))
"""


def _loss_section(*flags, config=DIGIT_PAIRS):
    result = _run(["-c", SHOW_CONFIG, f"--config={config}", *flags])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_loss_hyper_parameter_the_experiment_does_not_set_reaches_the_config():
    loss, stderr = _loss_section("--config.loss.kwargs.distance=cosine", "--config.loss.kwargs.reduction",
                                 "sum_per_anchor")
    assert loss["kwargs"] == {"pos_margin": 0.0, "neg_margin": 1.0, "distance": "cosine",
                              "reduction": "sum_per_anchor"}
    assert stderr == ""


def test_replaced_loss_takes_its_own_hyper_parameters_and_a_miner_its_own():
    loss, stderr = _loss_section("--config.loss.name=triplet_margin", "--config.loss.kwargs.margin=0.1",
                                 "--config.loss.kwargs.swap=true", "--config.loss.miner.name=triplet_margin",
                                 "--config.loss.miner.kwargs.type_of_triplets=semihard")
    assert loss["name"] == "triplet_margin" and loss["kwargs"] == {"margin": 0.1, "swap": True}
    assert loss["miner"] == {"name": "triplet_margin", "kwargs": {"type_of_triplets": "semihard"}}
    assert "not carried over" in stderr and "pos_margin" in stderr  # contrastive's, from the experiment file


def test_extra_term_hyper_parameters_are_settable(tmp_path):
    experiment = tmp_path / "with_proxy.py"
    experiment.write_text(
        "from jaxdml.config import load_config_file\n\n\n"
        "def get_config():\n"
        f"    config = load_config_file({str(DIGIT_PAIRS)!r})\n"
        "    config.loss.extra_terms.proxy = dict(name='proxy_anchor', weight=0.5)\n"
        "    return config\n")
    loss, _ = _loss_section("--config.loss.extra_terms.proxy.kwargs.margin=0.2", config=experiment)
    assert loss["extra_terms"]["proxy"] == {"name": "proxy_anchor", "weight": 0.5, "kwargs": {"margin": 0.2}}
    result = _run(["-c", SHOW_CONFIG, f"--config={experiment}", "--config.loss.extra_terms.proxy.kwargs.margn=0.2"])
    line = _one_error_line(result)
    assert "loss.extra_terms.proxy.kwargs.margn: loss 'proxy_anchor' has no hyper-parameter 'margn'" in line
    assert "Did you mean: margin?" in line and "Its hyper-parameters: margin, alpha." in line


def test_unparsable_hyper_parameter_names_its_type():
    result = _run(["-c", SHOW_CONFIG, f"--config={DIGIT_PAIRS}", "--config.loss.name=triplet_margin",
                   "--config.loss.kwargs.margin=wide"])
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "loss.kwargs.margin='wide' must be a finite number" in line and "e.g. loss.kwargs.margin=0.05" in line
