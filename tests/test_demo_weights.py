"""The demos load shipped weights (the same on every machine), and the training code that made them still
reproduces them: closely on any machine (kernels differ across CPUs), bit for bit on the machine that wrote them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.files import sha256_file
from exporter.demo import load_digits_cnn, train_digits_cnn
from exporter.demo_weights import weights_path
from exporter.sources import load_model, state_dict_sha256

DIGITS_SHA256 = "d4aa96a515ce899fed680d21ff8661dd5e2218afef90c94d48dc0395cfa11e1b"  # state dict, as manifests record it
TINYLM_SHA256 = "b1a7eddb5ed0a70437d6dd83d59c078cf126376bf57f1e9701c76b64c742577d"


def test_demo_digits_loads_the_same_weights_everywhere():
    assert load_model("demo:digits", []).sha256 == DIGITS_SHA256
    assert sha256_file(weights_path("digits")) == "2be0dbedfb5d42165cf9e2073882d999a14511cd23c44865bce99a0de347afde"


def test_demo_tinylm_loads_the_same_weights_everywhere():
    from exporter.lm.source import load_causal_lm

    assert load_causal_lm("demo:tinylm").sha256 == TINYLM_SHA256


def _predictions(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).argmax(1).numpy()


def test_retraining_digits_reproduces_the_shipped_weights():
    shipped = load_digits_cnn()
    retrained, _, _, x_eval, y_eval = train_digits_cnn()
    shipped_pred, retrained_pred = _predictions(shipped, x_eval), _predictions(retrained, x_eval)
    agreement = float(np.mean(shipped_pred == retrained_pred))
    accuracy_shipped = float(np.mean(shipped_pred == y_eval))
    accuracy_retrained = float(np.mean(retrained_pred == y_eval))
    print(f"retrained digits: agreement {agreement:.4f}, accuracy {accuracy_retrained:.4f} vs "
          f"shipped {accuracy_shipped:.4f}, identical weights: {state_dict_sha256(retrained) == DIGITS_SHA256}")
    assert agreement >= 0.97
    assert abs(accuracy_retrained - accuracy_shipped) <= 0.015
    assert accuracy_shipped >= 0.98


@pytest.mark.slow
@pytest.mark.hf
def test_retraining_tinylm_reproduces_the_shipped_weights():
    from exporter.lm.corpus import stdlib_text
    from exporter.lm.tinylm import load_tinylm, train_tinylm

    shipped, tokenizer = load_tinylm()
    retrained, _ = train_tinylm(tokenizer)
    ids = torch.tensor(tokenizer(stdlib_text("eval"))["input_ids"][:8 * 128]).view(8, 128)
    with torch.no_grad():
        ppl = {name: float(torch.exp(m(input_ids=ids, labels=ids).loss)) for name, m in
               (("shipped", shipped), ("retrained", retrained))}
    print(f"tinylm eval perplexity: {ppl}, identical weights once rounded to float16 as shipped: "
          f"{state_dict_sha256(retrained.half().float()) == TINYLM_SHA256}")
    # float training takes another path on another CPU's kernels: the byte-level model it replaced retrained to
    # perplexity 10.12 against its shipped 9.74 (+3.9%) on a Xeon with AVX-512 and AMX; the machine that trained
    # this one (eval perplexity 29.48 per BPE token, 2.6 characters) retrains it bit for bit before the float16
    # rounding of the shipped file
    assert abs(ppl["retrained"] / ppl["shipped"] - 1) <= 0.05
    assert ppl["shipped"] < 40  # trained, not a random init (a uniform model over the 1024 tokens is 1024)
