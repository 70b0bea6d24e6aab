"""Small models built in the tests, one per family edgeport must handle. Each factory returns
(module, example_inputs) with fixed-seed weights; `python file.py:factory` specs point here."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _seeded_model(model_class: type[nn.Module], *example_shape: int) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The factory most families share: seed-0 weights, eval mode, one random example input."""
    _seeded()
    return model_class().eval(), (torch.randn(*example_shape),)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5))

    def forward(self, features):
        return self.net(features)


def mlp():
    return _seeded_model(MLP, 1, 20)


class ConvBNDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),  # depthwise
            nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.Hardswish(),  # pointwise
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(24, 8)

    def forward(self, image):
        return self.head(torch.flatten(self.features(image), 1))


def _randomize_batchnorm(module: nn.Module) -> None:
    """Non-trivial running statistics, as a trained network has, so BN folding is really tested."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def cnn():
    _seeded()
    model = ConvBNDepthwise()
    _randomize_batchnorm(model)
    return model.eval(), (torch.randn(1, 3, 32, 32),)


def offset_images(rng, count: int) -> np.ndarray:
    """Noise images whose colour channels are each shifted by -2..2: what outlier_cnn learned to classify."""
    shifts = rng.uniform(-2.0, 2.0, (count, 3, 1, 1))
    return (rng.standard_normal((count, 3, 32, 32)) + shifts).astype(np.float32)


def offset_classes(images: torch.Tensor) -> torch.Tensor:
    """8 classes: the signs of the three channel shifts."""
    signs = (images.mean(dim=(2, 3)) > 0).long()
    return signs[:, 0] * 4 + signs[:, 1] * 2 + signs[:, 2]


def outlier_cnn():
    """The depthwise CNN, trained in a few seconds, then given one activation channel 1000x the others before
    the pointwise conv (as trained CNNs have a few). The function is unchanged; one int8 range for that tensor
    loses every other channel."""
    model, example = cnn()
    generator = np.random.default_rng(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        images = torch.from_numpy(offset_images(generator, 64))
        loss = nn.functional.cross_entropy(model(images), offset_classes(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.features[4].bias[0] = 3.0  # the channel stays active after the ReLU6...
        model.features[6].weight[:, :1].div_(1000.0)  # ...and the pointwise conv reads it back at its old size
    return _ScaledChannel(model, channel=0, factor=1000.0).eval(), example


class _ScaledChannel(nn.Module):
    def __init__(self, model: ConvBNDepthwise, channel: int, factor: float) -> None:
        super().__init__()
        self.features, self.head = model.features, model.head
        scale = torch.ones(1, self.features[6].in_channels, 1, 1)
        scale[:, channel] = factor
        self.register_buffer("channel_scale", scale)

    def forward(self, image):
        hidden = self.features[:6](image) * self.channel_scale
        return self.head(torch.flatten(self.features[6:](hidden), 1))


class TinyEncoder(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, dropout=0.0, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        hidden = self.encoder(self.embed(tokens))
        return self.head(self.norm(hidden).mean(dim=1))


def transformer():
    return _seeded_model(TinyEncoder, 1, 12, 32)


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(10, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, sequence):
        output, _ = self.gru(sequence)
        return self.head(output[:, -1])


def gru():
    return _seeded_model(GRUClassifier, 1, 15, 10)


class RecurrentEncoder(nn.Module):
    """A speaker-encoder shape: a 2-layer recurrent stack over frames of features, the last hidden state
    projected, ReLU'd and L2-normalised (an embedding, as resemblyzer's)."""

    def __init__(self, cell: type[nn.Module] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = cell(16, 32, 2, batch_first=True)
        self.linear = nn.Linear(32, 24)

    def forward(self, frames):
        output, _ = self.rnn(frames)
        embedding = torch.relu(self.linear(output[:, -1]))
        return embedding / torch.norm(embedding, dim=1, keepdim=True)


def _recurrent_encoder(cell: type[nn.Module]):
    _seeded()
    model = RecurrentEncoder(cell)
    with torch.no_grad():  # input weights scaled up so the gates move (PyTorch's init keeps them near 0.5)
        for name, parameter in model.rnn.named_parameters():
            if name.startswith("weight_ih"):
                parameter.mul_(3.0)
    return model.eval(), (torch.randn(1, 30, 16),)


def lstm_encoder():
    return _recurrent_encoder(nn.LSTM)


def gru_encoder():
    return _recurrent_encoder(nn.GRU)


class PitchCNN(nn.Module):
    """A CREPE-shaped audio model: a strided conv over raw samples (one input channel, a long kernel),
    then conv -> ReLU -> BatchNorm -> max-pool blocks (the BatchNorm after the ReLU cannot fold into the
    conv), and a sigmoid per pitch bin."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Conv2d(1, 16, (64, 1), stride=(4, 1))
        self.front_bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, (8, 1))
        self.conv_bn = nn.BatchNorm2d(16)
        self.classifier = nn.Linear(16 * 6, 24)

    def forward(self, audio):
        x = nn.functional.pad(audio[:, None, :, None], (0, 0, 30, 30))
        x = nn.functional.max_pool2d(self.front_bn(torch.relu(self.front(x))), (2, 1))
        x = nn.functional.max_pool2d(self.conv_bn(torch.relu(self.conv(x))), (4, 1))
        return torch.sigmoid(self.classifier(torch.flatten(x, 1)))


def pitch_cnn():
    _seeded()
    model = PitchCNN()
    _randomize_batchnorm(model)
    return model.eval(), (torch.randn(1, 256),)


FAMILIES = {"mlp": mlp, "cnn": cnn, "transformer": transformer, "gru": gru}
AUDIO_FAMILIES = {"lstm_encoder": lstm_encoder, "gru_encoder": gru_encoder, "pitch_cnn": pitch_cnn}


# --- models that must fail in specific ways ---------------------------------------------------

@torch.library.custom_op("edgeport_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class MysteryBlock(nn.Module):
    def forward(self, x):
        return mystery(x)


class WithCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.block = MysteryBlock()

    def forward(self, x):
        return self.block(self.proj(x))


def custom_op():
    return _seeded_model(WithCustomOp, 1, 8)


def raises():
    raise RuntimeError("weights not found")


def not_a_module():
    return {"weights": 1}


def no_examples():
    _seeded()
    return MLP().eval()


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export refuses it, TorchScript tracing takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        if x.sum() > -1e9:  # always true on real data; a data-dependent branch all the same
            return self.fc(x)
        return -self.fc(x)


def data_dependent():
    return _seeded_model(DataDependent, 1, 6)


class NpuUnfriendly(nn.Module):
    """A small classifier with a sine activation: int8 LiteRT runs it, Arm Ethos-U has no SIN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.sin(self.fc1(x)))


def npu_unfriendly():
    return _seeded_model(NpuUnfriendly, 1, 16)


class AtanActivation(nn.Module):
    def forward(self, x):
        return torch.atan(x)


class PortableInTheMiddle(nn.Module):
    """A classifier whose activation is a module of its own that XNNPACK has no kernel for (atan): ExecuTorch
    runs it on the portable kernels, and the report names it by its module path, `act`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), AtanActivation(), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def portable_in_the_middle():
    return _seeded_model(PortableInTheMiddle, 1, 16)


FAMILIES_WITH_DATA = {**FAMILIES, **AUDIO_FAMILIES, "npu_unfriendly": npu_unfriendly,
                      "portable_in_the_middle": portable_in_the_middle}


class OutlierChannels(nn.Module):
    """Five weighted layers; the activation entering `head.2` has two channels ~300x larger than the
    rest (a per-channel scale the next layer undoes), as LLM and detector activations often do.
    Per-tensor int8 activation ranges then crush the ordinary channels at that layer's input."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))
        scale = torch.ones(32)
        scale[:2] = 300.0
        self.register_buffer("channel_scale", scale)
        with torch.no_grad():
            self.head[0].bias[:2] = 3.0  # those channels stay active after the ReLU...
            self.head[2].weight.div_(scale)  # ...and the function is unchanged; only the activation range is not

    def forward(self, x):
        hidden = self.head[1](self.head[0](self.stem(x))) * self.channel_scale
        return self.head[4](self.head[3](self.head[2](hidden)))


def outlier_channels():
    return _seeded_model(OutlierChannels, 1, 16)


class ZeroOutput(nn.Module):
    """A classifier whose head was never trained and is all zeros (as some init schemes leave it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def zero_output():
    return _seeded_model(ZeroOutput, 1, 8)
