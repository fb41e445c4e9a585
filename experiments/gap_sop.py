"""Stanford Online Products: GAP twin of gsp_sop.py: GAP + GMP on the conventional protocol, GAP on the MLRC
protocol (the release's baselines; no ZSR).

Recipes and their provenance: experiments/_gsp_recipe.py (MLRC: also experiments/_mlrc_recipe.py). Evaluated on SOP
(11,316 test classes). Prepare the data once (needs TensorFlow: pip install -e '.[prepare]'):

    python -m jaxdml.data.prepare --dataset stanford_online_products

Conventional protocol (default, no variant): ResNet-50, one 512-d model, GAP + GMP. The ImageNet ResNet-50 weights
once (torchvision's IMAGENET1K_V1 file; needs torch), then (from the repository root):

    python -m jaxdml.models.convert --arch resnet50 --src resnet50-0676ba61.pth --out weights/resnet50
    python -m jaxdml.main --config experiments/gap_sop.py --workdir runs/gap_sop

Expected run time and numbers: not measured yet (no dataset, weights or GPU on the development machines). The GSP
paper's tables are not in our reference material; for orientation only: Intra-Batch ResNet-50/512 R@1 81.4
(conventional protocol, pretrained).

MLRC protocol (variant after the colon), the release's BN-Inception runs (sample_runs.sh, configs/dml_large.yaml):
BN-Inception with frozen BN, 4 class-disjoint folds x 128-d (512-d concatenated), 8 classes x 4 images, Adam lr 1e-5
(constant), plain GAP (the release's default --pooling: GlobalPooling, average only); the baseline of the release's
main recipe, mlrc_c1_xbm, adds the C1 contrastive loss with the release's cross-batch memory of 1,400 batches (from
step 1,000 + 1,400); validation every 1,000 steps on MAP@R, each fold stopping after 10 validations without a new
best. BN-Inception's ImageNet weights once (the pretrainedmodels port's bn_inception-52deb4733.pth; needs torch),
then all four folds in sequence (a rerun resumes) and each 128-d model and the 512-d concatenation on the test set
(<workdir>/summary.json):

    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception
    python -m jaxdml.main --config experiments/gap_sop.py:mlrc_c1_xbm --workdir runs/gap_sop/mlrc_c1_xbm_seed0

Variants: mlrc_c1_xbm, mlrc_c2_xbm, mlrc_ms_xbm, mlrc_triplet_xbm and, without the memory, mlrc_c1, mlrc_c2,
mlrc_ms, mlrc_triplet: the GAP baseline of each gsp_sop.py variant. The release's three repeats: --config.seed=1 and
2, each in its own --workdir; folds on several machines: --config.data.fold=K (K = 0..3), as in ccp_sop.py.

Expected run time and numbers: not measured here (no dataset/GPU). The GSP paper's MLRC tables are not in our
reference material (paper_tables.md has none). The same baselines in the same TF framework (CCP supplement Table 1,
BN-Inception, mean of 3 repeats, run with the CCP release's schedule and Lipschitz normalisation), P@1 / P@R / MAP@R
in %:
    variant            512-d (concatenated)       128-d (per model)
    mlrc_c1_xbm        78.68 / 54.66 / 51.82      75.37 / 49.95 / 47.39
    mlrc_c1            68.84 / 43.28 / 40.25      64.96 / 39.68 / 36.54
    mlrc_c2_xbm        76.66 / 51.91 / 49.04      73.47 / 48.18 / 45.15
    mlrc_c2            74.87 / 49.88 / 46.94      71.15 / 45.77 / 42.66
    mlrc_ms_xbm        (not in the paper)
    mlrc_ms            72.74 / 47.07 / 44.10      68.96 / 43.25 / 40.18
    mlrc_triplet_xbm   (not in the paper)
    mlrc_triplet       75.40 / 50.13 / 47.03      70.41 / 44.32 / 41.03
"""

from jaxdml.config import load_sibling


def get_config(variant: str = ""):
    """No variant: the conventional ResNet-50 recipe; ``mlrc_*``: the release's BN-Inception MLRC recipe."""
    recipe = load_sibling(__file__, "_gsp_recipe")
    if variant:
        return recipe.get_mlrc_config("stanford_online_products", variant, pooling="gap")
    return recipe.get_config("stanford_online_products", pooling="gap+gmp")
