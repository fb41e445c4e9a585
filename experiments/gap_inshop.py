"""In-Shop: GAP twin of gsp_inshop.py, with GAP + GMP
(the release's conventional baseline; no ZSR).

Recipe and its provenance: experiments/_gsp_recipe.py. Evaluated on In-Shop (query 14,218 / gallery 12,612).
Prepare the data once (needs TensorFlow: pip install -e '.[prepare]'):

    python -m jaxdml.data.prepare --dataset inshop --manual_dir DIR

and the ImageNet ResNet-50 weights once (torchvision's IMAGENET1K_V1 file; needs torch):

    python -m jaxdml.models.convert --arch resnet50 --src resnet50-0676ba61.pth --out weights/resnet50

then (from the repository root):

    python -m jaxdml.main --config experiments/gap_inshop.py --workdir runs/gap_inshop

Expected run time and numbers: not measured yet (no dataset, weights or GPU on the development machines).
The GSP paper's tables are not in our reference material; for orientation only:
Intra-Batch ResNet-50/512 R@1 92.8 (conventional protocol, pretrained).
"""

from jaxdml.config import load_sibling


def get_config():
    return load_sibling(__file__, "_gsp_recipe").get_config("inshop", pooling="gap+gmp")
