"""Tiny Hugging Face models built from configs (transformers, seeded, no download): the families
people ship most. Each factory returns (module, example_inputs); `file.py:factory` specs point here.

Weight matrices are drawn N(0, 1/fan_in) (biases and norms kept as initialised): transformers' own init
(std 0.02, zeroed heads on some conv nets) gives near-constant or all-zero outputs on tiny
configs, and a model whose output is constant tests nothing. `healthy()` checks that."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SEQUENCE = 16  # text tokens
VOCAB = 128
IMAGE = 32  # pixels per side
AUDIO = 1600  # raw waveform samples (0.1 s at 16 kHz)
MEL = (16, 64)  # Whisper-style log-mel features: bins x frames


def _reinit(model: nn.Module, seed: int, image: bool = False) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:  # weight matrices, kernels and embedding tables: unit-variance outputs
                p.copy_(torch.randn(p.shape, generator=generator) / max(p[0].numel(), 1) ** 0.5)
    if image:  # BatchNorm statistics from a batch of inputs, as training leaves them (else activations fade)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.momentum = None  # a plain average over the batches seen
            m.train()
        with torch.no_grad():
            model(torch.randn(32, 3, IMAGE, IMAGE, generator=generator))
    return model.eval()


class TextClassifier(nn.Module):
    """input_ids + attention_mask -> class logits, as a sequence-classification head is called."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class Logits(nn.Module):
    """One tensor input -> the model's logits (or last hidden state)."""

    def __init__(self, model: nn.Module, argument: str, field: str = "logits") -> None:
        super().__init__()
        self.model, self.argument, self.field = model, argument, field

    def forward(self, x):
        return getattr(self.model(**{self.argument: x}), self.field)


def _text_examples() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (1, SEQUENCE), generator=generator)
    mask = torch.ones(1, SEQUENCE, dtype=torch.int64)
    mask[:, -3:] = 0  # padded tail: the attention mask really masks
    return ids, mask


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=4)
    return TextClassifier(_reinit(BertForSequenceClassification(config), 0)), _text_examples()


def distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=64, num_labels=4)
    return TextClassifier(_reinit(DistilBertForSequenceClassification(config), 1)), _text_examples()


def roberta():
    """RoBERTa: position ids counted from the input ids past the padding index (cumsum), one token type."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, type_vocab_size=1, num_labels=4,
                           pad_token_id=0)
    return TextClassifier(_reinit(RobertaForSequenceClassification(config), 2)), _text_examples()


def bert_relative():
    """BERT with relative position scores (relative_key_query) and a gelu_new (tanh) feed-forward."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=4, hidden_act="gelu_new",
                        position_embedding_type="relative_key_query")
    return TextClassifier(_reinit(BertForSequenceClassification(config), 3)), _text_examples()


def distilbert_sinusoidal():
    """DistilBERT with fixed sinusoidal position embeddings and a ReLU feed-forward."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, activation="relu",
                              max_position_embeddings=64, num_labels=4, sinusoidal_pos_embds=True)
    return TextClassifier(_reinit(DistilBertForSequenceClassification(config), 4)), _text_examples()


def llama():
    """A decoder's next-token logits, without a cache: grouped-query attention, rotary, tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, use_cache=False)
    model = _reinit(LlamaForCausalLM(config), 2)
    model.config.use_cache = False
    return TextClassifier(model), _text_examples()


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=5)
    return Logits(_reinit(ViTForImageClassification(config), 3), "pixel_values"), _image_examples()


def resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          layer_type="basic", num_labels=5)
    return Logits(_reinit(ResNetForImageClassification(config), 4, image=True), "pixel_values"), _image_examples()


def convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=2,
                            num_labels=5)
    return Logits(_reinit(ConvNextForImageClassification(config), 5), "pixel_values"), _image_examples()


def mobilenet():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(num_channels=3, image_size=IMAGE, depth_multiplier=0.35, num_labels=5)
    return Logits(_reinit(MobileNetV2ForImageClassification(config), 6, image=True), "pixel_values"), _image_examples()


def wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=True)
    model = Logits(_reinit(Wav2Vec2Model(config), 7), "input_values", "last_hidden_state")
    generator = torch.Generator().manual_seed(1)
    return model, (torch.randn(1, AUDIO, generator=generator),)


def whisper():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    bins, frames = MEL
    config = WhisperConfig(num_mel_bins=bins, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                           encoder_ffn_dim=64, max_source_positions=frames // 2, vocab_size=VOCAB, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = Logits(_reinit(WhisperEncoder(config), 8), "input_features", "last_hidden_state")
    generator = torch.Generator().manual_seed(1)
    return model, (torch.randn(1, bins, frames, generator=generator),)


def _image_examples() -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(1, 3, IMAGE, IMAGE, generator=generator),)


# encoders of other configurations, checked on ios (tests/test_hf_zoo.py): the MIL ops their conversions emit
ENCODER_CONFIGS = {"roberta": roberta, "bert_relative": bert_relative, "distilbert_sinusoidal": distilbert_sinusoidal}
FAMILIES = {"bert": bert, "distilbert": distilbert, "llama": llama, "vit": vit, "resnet": resnet,
            "convnext": convnext, "mobilenet": mobilenet, "wav2vec2": wav2vec2, "whisper": whisper}


def eval_arrays(family: str, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs shaped for a family: token ids with padded tails, or standard-normal signals."""
    _, examples = {**FAMILIES, **ENCODER_CONFIGS}[family]()
    rng = np.random.default_rng(seed)
    if len(examples) == 2:  # input_ids, attention_mask
        ids = rng.integers(1, VOCAB, (samples, SEQUENCE)).astype(np.int64)
        lengths = rng.integers(SEQUENCE // 2, SEQUENCE + 1, samples)
        mask = (np.arange(SEQUENCE)[None, :] < lengths[:, None]).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask}
    name = {"wav2vec2": "x", "whisper": "x"}.get(family, "x")
    return {name: rng.standard_normal((samples, *examples[0].shape[1:])).astype(np.float32)}


def healthy(family: str) -> float:
    """The spread of a family's outputs across samples (std of per-sample means): > 0 when it is alive."""
    model, _ = FAMILIES[family]()
    arrays = eval_arrays(family, 8)
    with torch.no_grad():
        out = torch.cat([model(*(torch.from_numpy(v[i:i + 1]) for v in arrays.values())) for i in range(8)])
    return float(out.float().std(0).mean())
