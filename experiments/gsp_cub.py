"""CUB-200-2011: GSP (generalized sum pooling) + ZSR + XBM + C1 contrastive, on the conventional and the MLRC
protocols.

Recipes and their provenance: experiments/_gsp_recipe.py (MLRC: also experiments/_mlrc_recipe.py). Evaluated on CUB
(classes 101-200). Prepare the data once (needs TensorFlow: pip install -e '.[prepare]'):

    python -m jaxdml.data.prepare --dataset caltech_birds2011

Conventional protocol (default, no variant): ResNet-50, one 512-d model. The ImageNet ResNet-50 weights once
(torchvision's IMAGENET1K_V1 file; needs torch), then (from the repository root):

    python -m jaxdml.models.convert --arch resnet50 --src resnet50-0676ba61.pth --out weights/resnet50
    python -m jaxdml.main --config experiments/gsp_cub.py --workdir runs/gsp_cub

Expected run time and numbers: not measured yet (no dataset, weights or GPU on the development machines). The GSP
paper's tables are not in our reference material; for orientation only: Intra-Batch ResNet-50/512 R@1 70.3;
Proxy-Anchor 69.9 (conventional protocol, pretrained).

MLRC protocol (variant after the colon), the release's BN-Inception runs (sample_runs.sh, configs/dml_small.yaml):
BN-Inception with frozen BN, 4 class-disjoint folds x 128-d (512-d concatenated), 8 classes x 4 images, Adam lr 1e-5
(constant), GSP with K = 64 prototypes (transport ratio 0.3, gamma 5, k-center over 1,024 GAP embeddings) and ZSR
0.1; the release's main recipe, mlrc_c1_xbm, adds the C1 contrastive loss with the release's cross-batch memory of
25 batches (from step 1,000 + 25); validation every 100 steps on MAP@R, each fold stopping after 15 validations
without a new best. BN-Inception's ImageNet weights once (the pretrainedmodels port's bn_inception-52deb4733.pth;
needs torch), then all four folds in sequence (a rerun resumes) and each 128-d model and the 512-d concatenation on
the test set (<workdir>/summary.json):

    python -m jaxdml.models.convert --arch bninception --src bn_inception-52deb4733.pth --out weights/bninception
    python -m jaxdml.main --config experiments/gsp_cub.py:mlrc_c1_xbm --workdir runs/gsp_cub/mlrc_c1_xbm_seed0

Variants: mlrc_c1_xbm, mlrc_c2_xbm, mlrc_ms_xbm, mlrc_triplet_xbm and, without the memory, mlrc_c1, mlrc_c2,
mlrc_ms, mlrc_triplet: GSP + ZSR over each loss (the GAP twins: gap_cub.py with the same variant). The release's
three repeats: --config.seed=1 and 2, each in its own --workdir; folds on several machines: --config.data.fold=K (K
= 0..3), as in ccp_cub.py.

Expected run time and numbers: not measured here (no dataset/GPU). The GSP paper's MLRC tables are not in our
reference material (paper_tables.md has none), so no GSP number is quoted. For orientation, the GAP baselines of the
same protocol and TF framework (gap_cub.py's variants; CCP supplement Table 2, BN-Inception, mean of 3 repeats, run
with the CCP release's schedule and Lipschitz normalisation), P@1 / P@R / MAP@R in %:
    variant            512-d (concatenated)       128-d (per model)
    mlrc_c1_xbm        65.40 / 35.57 / 24.87      57.57 / 30.42 / 19.84
    mlrc_c1            63.67 / 33.77 / 23.08      56.21 / 29.65 / 19.06
    mlrc_c2_xbm        68.62 / 37.53 / 26.83      60.18 / 32.25 / 21.41
    mlrc_c2            67.49 / 37.18 / 26.47      59.73 / 31.86 / 21.01
    mlrc_ms_xbm        (not in the paper)
    mlrc_ms            64.65 / 34.84 / 24.15      57.24 / 30.29 / 19.64
    mlrc_triplet_xbm   (not in the paper)
    mlrc_triplet       64.01 / 34.55 / 23.43      55.51 / 29.38 / 18.51
"""

from jaxdml.config import load_sibling


def get_config(variant: str = ""):
    """No variant: the conventional ResNet-50 recipe; ``mlrc_*``: the release's BN-Inception MLRC recipe."""
    recipe = load_sibling(__file__, "_gsp_recipe")
    if variant:
        return recipe.get_mlrc_config("caltech_birds2011", variant, pooling="gsp")
    return recipe.get_config("caltech_birds2011", pooling="gsp")
