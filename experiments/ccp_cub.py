"""CUB-200-2011 on the MLRC protocol: every row of the CCP paper's Table 2 we can run.

Recipe, its provenance and its differences from the release: experiments/_mlrc_recipe.py. Prepare the data once
(needs TensorFlow: pip install -e '.[prepare]') and BN-Inception's ImageNet weights (the pretrainedmodels port's
bn_inception-52deb4733.pth; needs torch):

    python -m jaxdml.data.prepare --dataset caltech_birds2011
    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception

A row (variant after the colon; default c2_ccp): all four folds in sequence (a rerun resumes), then each 128-d model
and the 512-d concatenation on the test set (<workdir>/summary.json):

    python -m jaxdml.main --config experiments/ccp_cub.py:c2_ccp --workdir runs/ccp_cub/c2_ccp_seed0

Folds on four machines: add --config.data.fold=K (K = 0..3) on machine K, all writing to the same --workdir (or
copies merged into one), then the command above only evaluates. The paper's three repeats: --config.seed=1 and 2,
each in its own --workdir. Variants: c1, c2, ms, triplet; each also _xbm (L memory), _xbm_s (S) and _ccp;
proxy_anchor, proxy_nca_pp, soft_triple. Validation every 25 steps; each fold stops after 60 validations
without a new best.

Expected run time and numbers: not measured (no dataset, weights or GPU on the development machines). The paper
(CCP supplement Table 2, BN-Inception, mean of 3 repeats), P@1 / P@R / MAP@R in %:
    variant       512-d (concatenated)       128-d (per model)
    c1            63.67 / 33.77 / 23.08      56.21 / 29.65 / 19.06
    c1_xbm        65.40 / 35.57 / 24.87      57.57 / 30.42 / 19.84
    c1_ccp        68.11 / 37.85 / 27.11      59.56 / 32.06 / 21.27
    c2            67.49 / 37.18 / 26.47      59.73 / 31.86 / 21.01
    c2_xbm        68.62 / 37.53 / 26.83      60.18 / 32.25 / 21.41
    c2_ccp        69.73 / 38.69 / 28.02      62.39 / 33.49 / 22.67
    ms            64.65 / 34.84 / 24.15      57.24 / 30.29 / 19.64
    ms_xbm        (not in the paper)
    ms_ccp        68.84 / 38.19 / 27.44      61.10 / 33.23 / 22.40
    triplet       64.01 / 34.55 / 23.43      55.51 / 29.38 / 18.51
    triplet_xbm   (not in the paper)
    triplet_ccp   65.36 / 35.42 / 24.53      56.65 / 30.17 / 19.31
    proxy_anchor  68.43 / 37.36 / 26.53      60.61 / 32.36 / 21.48
    proxy_nca_pp  65.48 / 35.60 / 24.85      58.49 / 31.73 / 20.96
    soft_triple   68.12 / 36.98 / 26.02      57.94 / 30.63 / 19.86
"""

from jaxdml.config import load_sibling


def get_config(variant: str = "c2_ccp"):
    return load_sibling(__file__, "_mlrc_recipe").get_config("caltech_birds2011", variant)
