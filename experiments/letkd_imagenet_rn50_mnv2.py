"""ImageNet distillation, ResNet-50 -> "MobileNetV2" (letKD supp. Table 2b): letKD-2 by default;
``:none|kd|fitnet|letkd1`` for the baselines.

The student is the release's ImageNet "MobileNetV2" (distillation/architectures/feature_extractors/
MobileNetV2_ImageNet.py), which is MobileNet V1 (13 depthwise-separable blocks to 1,024 channels):
jaxdml.models.imagenet's ``imagenet_mobilenet``, trained from scratch. Table 2b's student / KD / AT+KD / DKD numbers
(68.87 / 68.58 / 69.56 / 72.05) are the KD literature's ResNet-50 -> MobileNet-V1 numbers too. Teacher:
torchvision's ResNet-50 (resnet50-0676ba61.pth, the V1 weights, top-1 76.13). Recipe:
experiments/_letkd_imagenet.py (100 epochs, batch 256, SGD 0.1 / 10 at 30, 60, 90), residual weights (1, 1) as
the supplement says for every pair but RN50-MNV2 on CIFAR-100 / Tiny-ImageNet. letKD-2's intermediate layer
follows the student's first 14x14 block (features6, 512 channels) and reads the teacher's layer3_0 (14x14); both
last maps are 7x7. FitNet (``:fitnet``) regresses features5 (28x28) onto layer2_3 (28x28). Prepare ImageNet once
(needs TensorFlow; ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in MANUAL_DIR) and convert the teacher:

    python -m jaxdml.data.prepare --dataset imagenet2012 --manual_dir MANUAL_DIR
    python -m jaxdml.models.convert --arch imagenet_resnet50 --src resnet50-0676ba61.pth \\
        --out weights/imagenet_resnet50
    python -m jaxdml.distill.prepare --config experiments/letkd_imagenet_rn50_mnv2.py --workdir runs/in_rn50_mnv2
    python -m jaxdml.main --config experiments/letkd_imagenet_rn50_mnv2.py --workdir runs/in_rn50_mnv2

Not measured here (no dataset/GPU on the development machines): run time and accuracy unknown. Expected
(supp. Table 2b, top-1 / top-5): teacher 76.13 / 92.86, student 68.87 / 88.76, KD 68.58 / 88.98, AT+KD 69.56 /
89.33, DKD 72.05 / 91.05, QuEST 72.54 / 91.13, letKD-1 73.78 / 91.81, letKD-2 73.98 / 92.00. jaxdml reports
top-1 only. Differences from the release: it ships no ImageNet configs, so batch 256, weight decay 1e-4 and the
layer placements are this recipe's choices.
"""

from jaxdml.config import load_sibling

BLOCKS = {"hint": ("features5", "layer2_3"), "inter": ("features6", "layer3_0")}


def get_config(method: str = "letkd2"):
    recipe = load_sibling(__file__, "_letkd_imagenet")
    return recipe.get_config("imagenet_mobilenet", "imagenet_resnet50", method, BLOCKS)
