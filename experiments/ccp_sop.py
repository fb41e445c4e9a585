"""Stanford Online Products on the MLRC protocol: every row of the CCP paper's Table 1 we can run.

Recipe, its provenance and its differences from the release: experiments/_mlrc_recipe.py. Prepare the data once
(needs TensorFlow: pip install -e '.[prepare]') and BN-Inception's ImageNet weights (the pretrainedmodels port's
bn_inception-52deb4733.pth; needs torch):

    python -m jaxdml.data.prepare --dataset stanford_online_products
    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception

A row (variant after the colon; default c2_ccp): all four folds in sequence (a rerun resumes), then each 128-d model
and the 512-d concatenation on the test set (<workdir>/summary.json):

    python -m jaxdml.main --config experiments/ccp_sop.py:c2_ccp --workdir runs/ccp_sop/c2_ccp_seed0

Folds on four machines: add --config.data.fold=K (K = 0..3) on machine K, all writing to the same --workdir (or
copies merged into one), then the command above only evaluates. The paper's three repeats: --config.seed=1 and 2,
each in its own --workdir. Variants: c1, c2, ms, triplet; each also _xbm (L memory), _xbm_s (S) and _ccp;
proxy_anchor, proxy_nca_pp, soft_triple. Validation every 250 steps; each fold stops after 60 validations
without a new best.

Expected run time and numbers: not measured (no dataset, weights or GPU on the development machines). The paper
(CCP supplement Table 1, BN-Inception, mean of 3 repeats), P@1 / P@R / MAP@R in %:
    variant       512-d (concatenated)       128-d (per model)
    c1            68.84 / 43.28 / 40.25      64.96 / 39.68 / 36.54
    c1_xbm        78.68 / 54.66 / 51.82      75.37 / 49.95 / 47.39
    c1_ccp        79.53 / 55.11 / 52.73      76.24 / 50.07 / 48.07
    c2            74.87 / 49.88 / 46.94      71.15 / 45.77 / 42.66
    c2_xbm        76.66 / 51.91 / 49.04      73.47 / 48.18 / 45.15
    c2_ccp        78.95 / 55.01 / 52.19      75.92 / 51.14 / 48.18
    ms            72.74 / 47.07 / 44.10      68.96 / 43.25 / 40.18
    ms_xbm        (not in the paper)
    ms_ccp        78.96 / 54.71 / 51.85      75.80 / 50.48 / 47.97
    triplet       75.40 / 50.13 / 47.03      70.41 / 44.32 / 41.03
    triplet_xbm   (not in the paper)
    triplet_ccp   77.09 / 52.42 / 49.33      72.21 / 46.38 / 43.11
    proxy_anchor  77.10 / 51.95 / 49.01      73.86 / 47.94 / 44.89
    proxy_nca_pp  76.07 / 51.17 / 48.20      72.89 / 47.47 / 44.44
    soft_triple   78.48 / 53.68 / 50.77      74.66 / 48.79 / 45.75
"""

from jaxdml.config import load_sibling


def get_config(variant: str = "c2_ccp"):
    return load_sibling(__file__, "_mlrc_recipe").get_config("stanford_online_products", variant)
