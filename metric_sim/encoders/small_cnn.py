"""A small convolutional network trained from scratch, for greyscale sets like Omniglot and ORL faces.

In the spirit of the Siamese network of Koch, Zemel & Salakhutdinov (2015), but small enough
to train on two CPU cores: a few blocks of 3x3 convolution, batch normalisation, ReLU and
2x2 max-pooling, then global average pooling to one vector per image (so any input size
works). Pretrained photo networks see little of what makes two handwritten characters or two
faces in a fixed lab setting the same; a network this size learns it from a few thousand images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metric_sim.errors import InvalidArgumentError

DEFAULT_WIDTHS = (32, 64, 128, 128)


class SmallCNN(nn.Module):
    """``len(widths)`` blocks of conv3x3-BN-ReLU-maxpool2, then global average pooling: ``(B, widths[-1])``."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS, *, stem_kernel: int = 5) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if int(in_channels) not in (1, 3) or not widths or min(widths) < 1:
            raise InvalidArgumentError(f"SmallCNN needs in_channels 1 or 3 and positive widths, got {in_channels}, {widths}")
        if stem_kernel not in (3, 5, 7):
            raise InvalidArgumentError(f"stem_kernel must be 3, 5 or 7, got {stem_kernel!r}")
        self.in_channels, self.widths, self.stem_kernel = int(in_channels), widths, int(stem_kernel)
        layers: list[nn.Module] = []
        channels = self.in_channels
        for i, width in enumerate(widths):
            kernel = self.stem_kernel if i == 0 else 3  # a wider first view of strokes and edges
            layers += [
                nn.Conv2d(channels, width, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def kwargs(self) -> dict:
        """The constructor arguments (saved so the network is rebuilt offline)."""
        return {"in_channels": self.in_channels, "widths": list(self.widths), "stem_kernel": self.stem_kernel}

    def block_parameter_names(self) -> list[list[str]]:
        """The parameter names of each conv block (conv + batch norm), first block first."""
        per_block = 4  # conv, batch norm, ReLU, max-pool
        return [[f"features.{i}.{name}" for i in range(b * per_block, (b + 1) * per_block)
                 for name, _ in self.features[i].named_parameters()] for b in range(len(self.widths))]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels).mean(dim=(2, 3))
