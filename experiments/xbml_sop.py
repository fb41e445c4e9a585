"""Stanford Online Products on the MLRC protocol with XBML: its head and cross-batch loss over a C1 / C2 / MS loss.

Recipe, its provenance and its differences from the release: experiments/_mlrc_recipe.py; XBML and what it
infers: jaxdml/losses/xbml.py. Prepare the data once (needs TensorFlow: pip install -e '.[prepare]') and
BN-Inception's ImageNet weights (the pretrainedmodels port's bn_inception-52deb4733.pth; needs torch):

    python -m jaxdml.data.prepare --dataset stanford_online_products
    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception

A row (variant after the colon; default c2_xbml): all four folds in sequence (a rerun resumes), then each 128-d model
and the 512-d concatenation on the test set (<workdir>/summary.json):

    python -m jaxdml.main --config experiments/xbml_sop.py:c2_xbml --workdir runs/xbml_sop/c2_xbml_seed0

Variants: c1_xbml, c2_xbml, ms_xbml (reading r1: ZSR on the prototype coefficients, code-backed) and c1_xbml_r2,
c2_xbml_r2, ms_xbml_r2 (reading r2: prototypes fitted to the other half re-express it); c1, c2, ms are the GAP
baselines of the same protocol. Three repeats: --config.seed=1 and 2, each in its own --workdir. Folds on several
machines: --config.data.fold=K, as in ccp_sop.py. Validation every 250 steps; each fold stops after 60
validations without a new best.

Expected run time and numbers: not measured (no dataset, weights or GPU on the development machines). The XBML
paper's numbers are not available to us (only its abstract), so none are quoted. The GAP baselines of this
protocol, from the CCP supplement (BN-Inception, mean of 3 repeats), P@1 / P@R / MAP@R in %:
    variant       512-d (concatenated)       128-d (per model)
    c1            68.84 / 43.28 / 40.25      64.96 / 39.68 / 36.54
    c2            74.87 / 49.88 / 46.94      71.15 / 45.77 / 42.66
    ms            72.74 / 47.07 / 44.10      68.96 / 43.25 / 40.18
"""

from jaxdml.config import load_sibling


def get_config(variant: str = "c2_xbml"):
    return load_sibling(__file__, "_mlrc_recipe").get_config("stanford_online_products", variant)
