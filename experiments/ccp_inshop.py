"""In-Shop on the MLRC protocol: every row of the CCP paper's Table 1 we can run.

Recipe, its provenance and its differences from the release: experiments/_mlrc_recipe.py. Prepare the data once
(needs TensorFlow: pip install -e '.[prepare]') and BN-Inception's ImageNet weights (the pretrainedmodels port's
bn_inception-52deb4733.pth; needs torch):

    python -m jaxdml.data.prepare --dataset inshop
    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception

A row (variant after the colon; default c2_ccp): all four folds in sequence (a rerun resumes), then each 128-d model
and the 512-d concatenation on the test set (<workdir>/summary.json):

    python -m jaxdml.main --config experiments/ccp_inshop.py:c2_ccp --workdir runs/ccp_inshop/c2_ccp_seed0

Folds on four machines: add --config.data.fold=K (K = 0..3) on machine K, all writing to the same --workdir (or
copies merged into one), then the command above only evaluates. The paper's three repeats: --config.seed=1 and 2,
each in its own --workdir. Variants: c1, c2, ms, triplet; each also _xbm (L memory), _xbm_s (S) and _ccp;
proxy_anchor, proxy_nca_pp, soft_triple. Validation every 250 steps; each fold stops after 60 validations
without a new best.

Expected run time and numbers: not measured (no dataset, weights or GPU on the development machines). The paper
(CCP supplement Table 1, BN-Inception, mean of 3 repeats), P@1 / P@R / MAP@R in %:
    variant       512-d (concatenated)       128-d (per model)
    c1            80.12 / 53.11 / 50.15      76.08 / 49.61 / 46.51
    c1_xbm        88.39 / 61.33 / 58.64      85.75 / 58.13 / 55.37
    c1_ccp        88.52 / 62.54 / 59.67      85.50 / 58.51 / 55.56
    c2            86.32 / 62.36 / 59.42      83.04 / 58.27 / 55.13
    c2_xbm        87.66 / 63.50 / 60.64      84.58 / 59.78 / 56.75
    c2_ccp        88.52 / 63.94 / 61.07      86.11 / 60.16 / 57.24
    ms            88.37 / 63.53 / 60.65      85.39 / 59.65 / 56.61
    ms_xbm        (not in the paper)
    ms_ccp        90.24 / 66.31 / 63.59      87.10 / 61.74 / 59.15
    triplet       86.71 / 63.81 / 60.60      82.58 / 58.74 / 55.25
    triplet_xbm   (not in the paper)
    triplet_ccp   89.44 / 67.23 / 64.28      86.00 / 62.24 / 59.04
    proxy_anchor  88.08 / 60.91 / 58.09      85.87 / 57.80 / 54.95
    proxy_nca_pp  87.33 / 60.33 / 57.48      84.79 / 57.33 / 54.42
    soft_triple   88.37 / 62.56 / 59.56      85.71 / 58.74 / 55.68
"""

from jaxdml.config import load_sibling


def get_config(variant: str = "c2_ccp"):
    return load_sibling(__file__, "_mlrc_recipe").get_config("inshop", variant)
