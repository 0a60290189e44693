"""Model registry: ``build_model(name, num_classes=..., in_channels=..., **kwargs)``.

Every model sets ``first_last_layers`` (module names of the first conv and the last linear), which
:func:`lsq.quant.convert.quantize_model` uses for the ``quan_lr`` exceptions.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lsq.errors import ConfigError
from lsq.models.resnet_cifar import resnet20
from lsq.models.resnet_imagenet import resnet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet18": resnet18,
}


def build_model(name: str, **kwargs) -> nn.Module:
    try:
        builder = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return builder(**kwargs)


__all__ = ["MODELS", "build_model", "resnet18", "resnet20"]
