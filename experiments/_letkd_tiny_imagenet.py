"""The Tiny-ImageNet distillation recipe (letKD supp. §1.2) shared by experiments/letkd_tiny_imagenet_*.py.

The CIFAR-100 recipe (experiments/_letkd_cifar100.py: 240 epochs, batch 64, SGD, lr / 10 at 150/180/210) on
64x64 images with letKD's Tiny-ImageNet augmentation, RandomRotation(20) + horizontal flip and no crop, the
same CIFAR networks (global pooling: their last maps are 16x16 for the ResNets), residual weights alpha 1
(penultimate and intermediate; supp. §1.2: "(1, 1) in all models except for RN50-MNV2", which sets its own 0.5 /
1), and teachers trained here (experiments/tiny_imagenet_teacher.py): no
public Tiny-ImageNet teachers exist. Validation (10,000 images) is the test set, as in the paper.
"""

from jaxdml.config import load_sibling

STEPS_PER_EPOCH = 1563  # ceil(100,000 / 64)


def get_config(student: str, teacher: str | None = None, method: str = "none", lr: float = 0.05):
    recipe = load_sibling(__file__, "_letkd_cifar100")
    config = recipe.get_config(student, teacher, method, lr)
    config.data.name = "tiny_imagenet"
    config.data.image_size = 64
    config.data.resize_size = 64
    config.data.augment = "rotate"
    config.data.rotation_degrees = 20.0
    config.data.flip = True
    config.train.num_steps = STEPS_PER_EPOCH * recipe.EPOCHS
    config.optim.step_boundaries = tuple(STEPS_PER_EPOCH * e for e in (150, 180, 210))
    config.train.eval_every = STEPS_PER_EPOCH * 10
    config.train.checkpoint_every = STEPS_PER_EPOCH * 5
    if teacher is not None:
        config.distill.teacher = f"runs/tiny_imagenet_teacher_{teacher}"  # experiments/tiny_imagenet_teacher.py
    config.distill.letkd.penultimate_alpha = 1.0
    config.distill.letkd.intermediate_alpha = 1.0
    return config
