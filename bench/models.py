"""The ~1M-parameter bench model: weights dominate its size, as in real deployments."""

from __future__ import annotations

import torch
from torch import nn


class BenchCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        blocks = []
        for cin, cout in ((3, 32), (32, 64), (64, 128)):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, 448), nn.ReLU(), nn.Linear(448, 10))

    def forward(self, image):
        return self.classifier(self.features(image))


def bench_cnn():
    torch.manual_seed(0)
    model = BenchCNN()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), (torch.randn(1, 3, 32, 32),)


def mobilevit():
    """MobileViT-small from its transformers config (seeded, no download): about 5M parameters and
    90 weighted layers (convolutions, attention and MLP linears), the size where per-layer blame used
    to dominate an export."""
    from transformers import MobileViTConfig, MobileViTForImageClassification

    torch.manual_seed(0)
    config = MobileViTConfig(image_size=128, num_labels=10)
    model = MobileViTForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # unit-variance weights and BatchNorm statistics from a batch, as after training
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / max(p[0].numel(), 1) ** 0.5)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.momentum = None
            m.train()
        model(torch.randn(16, 3, 128, 128, generator=generator))
    return model.eval(), (torch.randn(1, 3, 128, 128, generator=generator),)
