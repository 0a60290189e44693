"""ResNet-18 for ImageNet: torchvision's model, with the real pretrained-weights API.

``weights`` takes torchvision's names (``"IMAGENET1K_V1"``, ``"DEFAULT"``), which download on a
machine with internet access; ``weights_path`` loads a local ``state_dict`` file instead (e.g.
``resnet18-f37072fd.pth`` copied from a machine that has it), which is how the float baseline is
evaluated offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models

from lsq.errors import WeightsNotFoundError


def resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    weights: str | None = None,
    weights_path: str | Path | None = None,
) -> nn.Module:
    if weights is not None and weights_path is not None:
        raise ValueError("give either weights (torchvision name) or weights_path (local file)")
    state = None
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ResNet-18 weights file {path} not found; copy torchvision's "
                "resnet18-f37072fd.pth there (or use weights='IMAGENET1K_V1' with internet)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Pretrained weights load into their own head (1000 classes for torchvision's file), which
    # is replaced below when num_classes differs, the same for weights= and weights_path=.
    head = num_classes
    if weights:
        head = 1000
    elif state is not None and "fc.weight" in state:
        head = state["fc.weight"].shape[0]
    model = tv_models.resnet18(weights=weights, num_classes=head)
    if state is not None:
        model.load_state_dict(state)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    if model.fc.out_features != num_classes:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.first_last_layers = ("conv1", "fc")
    return model
