"""A timm ResNet (random weights) on coloured digits: which normalization at which batch size?

The factories a user would write for ``normlab study`` (README, "Your own model"):

    PYTHONPATH=examples/study normlab study --model image_resnet:make_model \\
        --data image_resnet:make_data --norms as-is,as-is@after,group:4,layer,none \\
        --batch-sizes 4,32 --lr 0.03,0.1 --seeds 3 --steps 120 --out study-resnet
    normlab advise study-resnet

The model is timm's ``resnet10t`` built with ``pretrained=False`` (nothing is downloaded); its
own normalization (the ``as-is`` arm) is batch norm, before each ReLU; ``as-is@after`` is the
same batch norms moved after their ReLU (``normlab.surgery.move_norms``: the 7 norms whose
output goes to a ReLU; those before a residual add stay). The data are scikit-learn's 8x8
digits, coloured (normlab's lab data set ``digits_rgb``: random ink and background colours per
image) and upsampled to 16x16. The ResNet's strides bring that to 1x1 in its last two stages:
there a group norm with one channel per group (``group``, the registry's default of gcd(32, C)
groups at these widths) has nothing left to normalize over and outputs only its bias, so the
example asks for 4 groups (``group:4``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch.utils.data import TensorDataset

SIZE = 16


def _import_timm():
    from zoo_import import torchvision

    torchvision()  # timm imports it (zoo_import.py: a CPU torch beside a CUDA torchvision)
    import timm

    return timm


def make_model():
    """timm's resnet10t for 10 classes, random weights, narrowed to 16-128 channels (the
    stock widths, 64-512, take about a second per step on one CPU thread)."""
    return _import_timm().create_model("resnet10t", pretrained=False, num_classes=10,
                                       stem_width=16, channels=(16, 32, 64, 128))


def make_data():
    """(train, test): coloured digits at 16x16, normalized per channel with train's mean/std."""
    from normlab.lab.data import load

    ds = load("digits_rgb", 0)

    def up(x):
        return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    x_train, x_test = up(ds.x_train), up(ds.x_test)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    return (TensorDataset((x_train - mean) / std, ds.y_train),
            TensorDataset((x_test - mean) / std, ds.y_test))
