"""Cars196 on the MLRC protocol: every row of the CCP paper's Table 2 we can run.

Recipe, its provenance and its differences from the release: experiments/_mlrc_recipe.py. Prepare the data once
(needs TensorFlow: pip install -e '.[prepare]') and BN-Inception's ImageNet weights (the pretrainedmodels port's
bn_inception-52deb4733.pth; needs torch):

    python -m jaxdml.data.prepare --dataset cars196
    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception

A row (variant after the colon; default c2_ccp): all four folds in sequence (a rerun resumes), then each 128-d model
and the 512-d concatenation on the test set (<workdir>/summary.json):

    python -m jaxdml.main --config experiments/ccp_cars.py:c2_ccp --workdir runs/ccp_cars/c2_ccp_seed0

Folds on four machines: add --config.data.fold=K (K = 0..3) on machine K, all writing to the same --workdir (or
copies merged into one), then the command above only evaluates. The paper's three repeats: --config.seed=1 and 2,
each in its own --workdir. Variants: c1, c2, ms, triplet; each also _xbm (L memory), _xbm_s (S) and _ccp;
proxy_anchor, proxy_nca_pp, soft_triple. Validation every 25 steps; each fold stops after 60 validations
without a new best.

Expected run time and numbers: not measured (no dataset, weights or GPU on the development machines). The paper
(CCP supplement Table 2, BN-Inception, mean of 3 repeats), P@1 / P@R / MAP@R in %:
    variant       512-d (concatenated)       128-d (per model)
    c1            77.75 / 33.69 / 23.50      64.17 / 26.50 / 16.13
    c1_xbm        83.68 / 37.74 / 27.93      72.13 / 28.55 / 18.83
    c1_ccp        83.76 / 37.78 / 28.32      72.05 / 28.74 / 18.96
    c2            81.04 / 34.97 / 24.73      69.17 / 27.70 / 17.22
    c2_xbm        82.40 / 36.07 / 25.99      70.01 / 28.49 / 18.01
    c2_ccp        82.89 / 36.27 / 26.27      72.16 / 28.98 / 18.52
    ms            80.88 / 36.45 / 26.23      69.27 / 28.93 / 18.25
    ms_xbm        (not in the paper)
    ms_ccp        86.26 / 38.97 / 29.14      74.97 / 30.44 / 19.85
    triplet       78.44 / 33.83 / 23.11      64.57 / 26.52 / 15.68
    triplet_xbm   (not in the paper)
    triplet_ccp   81.84 / 35.61 / 25.21      68.75 / 28.21 / 17.43
    proxy_anchor  85.29 / 37.53 / 27.73      75.79 / 29.91 / 19.56
    proxy_nca_pp  82.87 / 36.56 / 26.34      72.45 / 29.91 / 19.32
    soft_triple   84.90 / 37.69 / 27.80      73.16 / 29.60 / 19.18
"""

from jaxdml.config import load_sibling


def get_config(variant: str = "c2_ccp"):
    return load_sibling(__file__, "_mlrc_recipe").get_config("cars196", variant)
