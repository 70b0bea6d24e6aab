"""demo:digits, the embedded default model: a small CNN trained on scikit-learn's bundled digits.

No download: load_digits ships inside scikit-learn, the trained weights inside the repository
(exporter/demo_weights.py: training is deterministic on one machine, but not across CPUs). The held-out
split is the default eval data and the first part of the train split the default calibration data.
"""

from __future__ import annotations

import numpy as np

SEED = 0
EVAL_FRACTION = 0.25
CALIBRATION_SAMPLES = 256
EPOCHS = 25


def digits_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_eval, y_eval); images are float32 N x 1 x 8 x 8 scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=EVAL_FRACTION, random_state=SEED, stratify=labels
    )
    return x_train, y_train, x_eval, y_eval


def build_digits_cnn():
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
            )
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, image):
            return self.classifier(self.features(image))

    return DigitsCNN()


def load_digits_cnn():
    """The shipped trained model (eval mode): the same weights on every machine."""
    from exporter.demo_weights import load_into

    return load_into(build_digits_cnn(), "digits")


def train_digits_cnn():
    """Returns (trained model in eval mode, x_train, y_train, x_eval, y_eval)."""
    import torch

    x_train, y_train, x_eval, y_eval = digits_splits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical weights on any machine
    try:
        torch.manual_seed(SEED)
        model = build_digits_cnn()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
        generator = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), 64):
                batch = order[start:start + 64]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x_train, y_train, x_eval, y_eval


if __name__ == "__main__":  # retrain here and rewrite the shipped weights
    from exporter.demo_weights import write

    print("wrote", write(train_digits_cnn()[0], "digits"))
