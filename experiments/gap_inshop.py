"""In-Shop: GAP twin of gsp_inshop.py: the same recipe with global average pooling (no ZSR).

Recipe and its provenance: experiments/_gsp_recipe.py. Evaluated on In-Shop (query 14,218 / gallery 12,612).
Prepare the data once (needs TensorFlow: pip install -e '.[prepare]'):

    python -m jaxdml.data.prepare --dataset inshop --manual_dir DIR

then:

    python -m jaxdml.main --config experiments/gap_inshop.py --workdir runs/gap_inshop

Expected run time and numbers: not measured yet (no dataset or GPU on the development machines; ResNet-50
starts from random weights until pretrained-weight import lands, so results are not comparable to papers
before that). The GSP paper's tables are not in our reference material; for orientation only:
Intra-Batch ResNet-50/512 R@1 92.8 (conventional protocol, pretrained).
"""

from jaxdml.config import load_sibling


def get_config():
    return load_sibling(__file__, "_gsp_recipe").get_config("inshop", pooling="gap")
