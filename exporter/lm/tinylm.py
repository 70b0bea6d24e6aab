"""demo:tinylm, the embedded default language model: a small Llama-style decoder with a byte-level
tokenizer, trained in well under a minute on the standard library's docstrings (exporter/lm/corpus.py).

No download: the trained weights ship in the repository (exporter/demo_weights.py). Training is deterministic
on one machine (fixed seed, one thread), not across CPUs; grouped-query attention, rotary
embeddings and tied embeddings are all there, as in the small models phones run.
"""

from __future__ import annotations

SEED = 0
STEPS = 300
BATCH = 24
SEQUENCE = 96
LEARNING_RATE = 4e-3
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
PROMPTS = ("Return the", "This module provides", "The default value is", "If the file")


def byte_tokenizer():
    """A Hugging Face fast tokenizer over the 256 bytes (GPT-2's byte-to-unicode map) plus three specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for token in (BOS, EOS, PAD):
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def tinylm_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=vocab_size - 3,
                       eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1)


def load_tinylm():
    """(the shipped trained model in eval mode, tokenizer): the same weights on every machine."""
    from transformers import LlamaForCausalLM

    from exporter.demo_weights import load_into

    tokenizer = byte_tokenizer()
    model = load_into(LlamaForCausalLM(tinylm_config(len(tokenizer))), "tinylm")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def train_tinylm():
    """(model in eval mode, tokenizer), bit-identical on any machine with this torch."""
    import torch
    from transformers import LlamaForCausalLM

    from exporter.lm.corpus import stdlib_text

    tokenizer = byte_tokenizer()
    ids = torch.tensor(tokenizer(stdlib_text("train"))["input_ids"], dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(tinylm_config(len(tokenizer)))
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


if __name__ == "__main__":  # retrain here and rewrite the shipped weights
    from exporter.demo_weights import write

    print("wrote", write(train_tinylm()[0], "tinylm"))
