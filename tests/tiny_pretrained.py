"""Tiny randomly initialised Hugging Face models and tokenizers, built and saved by the tests.

Nothing is downloaded: `tokenizers` trains a small byte-level BPE on a fixed text, and
`transformers` initialises each architecture from a seed and writes it with `save_pretrained`.
"""

import json
import os

TEXT = [
    "Instruction tuning teaches a language model to follow natural language instructions.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Premise: the cat sat on the mat. Hypothesis: a cat is sitting. Does the premise entail it?",
    "Zero-shot evaluation on held-out clusters: 12 clusters, 62 datasets, 10 templates each.",
    "Café, naïve, Straße, größer — 東京は日本の首都です。 Привет, мир! ¿Qué tal? 123 + 456 = 579",
    "def f(x):\n    return x * 2\n\n\tTabs\tand   spaces   matter.",
]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

# Shapes small enough for a CPU test, with GQA (4 query heads over 2 kv heads).
COMMON = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=16384)

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=16, rope_theta=10000.0)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        head_dim=16, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=16, rope_theta=1e6, sliding_window=12)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "tied": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=32, tie_word_embeddings=True)),  # SmolLM-style
}


def train_tokenizer(vocab_size: int = 320):
  """A byte-level BPE tokenizer (tokenizers.Tokenizer) with <s>, </s> and <unk> as ids 0-2."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[UNK, BOS, EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(TEXT * 4, trainer)
  return tok


def build(arch: str, directory: str, *, seed: int = 0, dtype: str = "float32",
          max_shard_size: str | None = None):
  """Builds a tiny `arch` model with a tokenizer.json, saves both in `directory`, returns the model."""
  import torch
  import transformers
  config_cls, model_cls, extra = ARCHITECTURES[arch]
  tok = train_tokenizer()
  config = getattr(transformers, config_cls)(
      vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
      **{**COMMON, **extra})
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).to(getattr(torch, dtype)).eval()
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(directory, **kwargs)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK,
               "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return model


def train_briefly(model, ids, steps: int, learning_rate: float = 3e-3) -> float:
  """`steps` of Adam on the token ids `ids` ([1, length]), so that the model's predictions are no longer near uniform
  (a random model gives every token about the same log-probability, and every option of a length about the same
  score); returns the last loss."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # on 2 busy cores, 2 threads are ten times slower than 1 for this model
  try:
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)  # 1e-2 stalls near a loss of 4.6
    for _ in range(steps):
      loss = model(ids, labels=ids).loss
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
  finally:
    torch.set_num_threads(threads)
  return loss.item()


WORDS = ["fox", "dog", "cat", "mat", "box", "model", "language", "cluster", "premise", "tabs", "spaces", "jugs"]


def questions(n: int, seed: int) -> list[dict]:
  """`n` four-option questions over WORDS (the options of unequal lengths), answer i % 4, for lm-eval's multiple
  choice: question, choices, label, answer."""
  import numpy as np
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    choices = [str(c) for c in rng.choice(WORDS, 4, replace=False)]
    choices[i % 4] = choices[i % 4] + ("s" if i % 3 else "")
    question = f"Which one jumps over the lazy {WORDS[i % len(WORDS)]} number {i}?"
    out.append({"question": question, "choices": choices, "label": i % 4, "answer": choices[i % 4]})
  return out
