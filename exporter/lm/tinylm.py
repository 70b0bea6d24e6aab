"""demo:tinylm, the embedded default language model: a small Llama-style decoder with a 1024-token byte-level BPE
tokenizer, both trained on the standard library's docstrings (exporter/lm/corpus.py) in about seven minutes on
one thread, long enough that its greedy continuations of the prompts read as docstring prose, not a loop (at 300
steps over a byte tokenizer they were "the the the", 73-87% repeated 3-grams; now at most 7%). 192 wide, not 128:
at 128 its 4-bit variants agreed with it on 72-84% of a prompt's greedy tokens (a .tflite a8w4 missed the 0.7
budget), at 192 on 84-100% (round-to-nearest 4-bit blocks, PyTorch).

No download: the trained weights and the tokenizer ship in the repository (exporter/demo_weights.py). Training
is deterministic on one machine (fixed seed, one thread), not across CPUs; grouped-query attention, rotary
embeddings and tied embeddings are all there, as in the small models phones run.
"""

from __future__ import annotations

SEED = 0
STEPS = 800
BATCH = 24
SEQUENCE = 128
LEARNING_RATE = 4e-3
VOCABULARY = 1024  # BPE merges over the bytes: 2.6 characters per token on the eval text
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
PROMPTS = ("Return the", "This module provides", "The default value is", "If the file")


def byte_tokenizer():
    """A Hugging Face fast tokenizer over the 256 bytes (GPT-2's byte-to-unicode map) plus three specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for token in (BOS, EOS, PAD):
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return _fast(core)


def bpe_tokenizer(text: str):
    """A byte-level BPE tokenizer of VOCABULARY tokens (the three specials included) learned from `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=VOCABULARY, special_tokens=[BOS, EOS, PAD], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _fast(core)


def _fast(core):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def tinylm_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def load_tinylm():
    """(the shipped trained model in eval mode, tokenizer): the same weights on every machine."""
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    from exporter.demo_weights import load_into, tokenizer_path

    tokenizer = _fast(Tokenizer.from_file(str(tokenizer_path("tinylm"))))
    model = load_into(LlamaForCausalLM(tinylm_config(tokenizer)), "tinylm")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_tinylm(tokenizer=None):
    """(model in eval mode, tokenizer), bit-identical on one machine with this torch; the tokenizer is learned
    first unless given (a retrain that reproduces the shipped weights takes the shipped tokenizer)."""
    import torch
    from transformers import LlamaForCausalLM

    from exporter.lm.corpus import stdlib_text

    tokenizer = tokenizer or bpe_tokenizer(stdlib_text("train"))
    ids = torch.tensor(tokenizer(stdlib_text("train"))["input_ids"], dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(tinylm_config(tokenizer))
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=STEPS, pct_start=0.1)
        generator = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(STEPS):
            starts = torch.randint(0, len(ids) - SEQUENCE - 1, (BATCH,), generator=generator)
            batch = torch.stack([ids[s:s + SEQUENCE] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


if __name__ == "__main__":  # retrain here and rewrite the shipped weights and tokenizer
    from exporter.demo_weights import tokenizer_path, write

    trained, learned = train_tinylm()
    learned.backend_tokenizer.save(str(tokenizer_path("tinylm")))
    print("wrote", write(trained, "tinylm"), "and", tokenizer_path("tinylm"))
