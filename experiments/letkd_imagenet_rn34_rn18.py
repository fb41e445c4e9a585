"""ImageNet distillation, ResNet-34 -> ResNet-18 (letKD supp. Table 2a): letKD-2 by default;
``:none|kd|fitnet|letkd1`` for the baselines.

Recipe: experiments/_letkd_imagenet.py (100 epochs, batch 256, SGD 0.1 / 10 at 30, 60, 90). Networks:
torchvision's ResNet-18 student and ResNet-34 teacher with their ``fc`` (jaxdml.models.imagenet). letKD-2's
intermediate layer follows the first block of stage 3 (student and teacher layer3_0, 14x14); the penultimate one
the last stage (7x7, K = 4,096). FitNet (the ``:fitnet`` baseline) regresses the stage-2 outputs (layer2_1 onto
layer2_3). Prepare ImageNet once (needs TensorFlow; put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
MANUAL_DIR) and convert torchvision's ResNet-34 weights (resnet34-b627a593.pth, top-1 73.31):

    python -m jaxdml.data.prepare --dataset imagenet2012 --manual_dir MANUAL_DIR
    python -m jaxdml.models.convert --arch imagenet_resnet34 --src resnet34-b627a593.pth \\
        --out weights/imagenet_resnet34
    python -m jaxdml.distill.prepare --config experiments/letkd_imagenet_rn34_rn18.py --workdir runs/in_rn34_rn18
    python -m jaxdml.main --config experiments/letkd_imagenet_rn34_rn18.py --workdir runs/in_rn34_rn18

(the third command computes the teacher artefacts over the training set, once; the fourth would do it too).
Not measured here (no dataset/GPU on the development machines): run time and accuracy unknown. Expected
(supp. Table 2a, top-1 / top-5): teacher 73.31 / 91.42, student 69.75 / 89.07, KD 70.66 / 89.88, AT+KD 70.70 /
90.00, DKD 71.70 / 90.41, QuEST 71.67 / 90.67, letKD-1 72.33 / 91.06, letKD-2 72.38 / 91.15. jaxdml reports top-1
only. Differences from the release: it ships no ImageNet configs, so batch 256, weight decay 1e-4 and the
intermediate placement are this recipe's choices (experiments/_letkd_imagenet.py).
"""

from jaxdml.config import load_sibling

BLOCKS = {"hint": ("layer2_1", "layer2_3"), "inter": ("layer3_0", "layer3_0")}


def get_config(method: str = "letkd2"):
    recipe = load_sibling(__file__, "_letkd_imagenet")
    return recipe.get_config("imagenet_resnet18", "imagenet_resnet34", method, BLOCKS)
