"""Causal-LM pre-training of a small GPT on tiny-shakespeare, characters as tokens.

Command:
  python -m lmx.main --config experiments/tiny_shakespeare_gpt.py --workdir runs/shakespeare_gpt
The corpus (1,115,394 characters, 65 distinct) is split 90 / 10 as nanoGPT does (the last
10% is validation); the model is a 4-layer, 256-wide GPT-2-style decoder ("gpt-char" in
lmx/transformer.py), 256-character context, batch 32, AdamW 1e-3 with cosine decay. The
metric is validation loss in nats per character (= per token here); a 300-character sample
(temperature 0.8, top-k 40) is printed and written to WORKDIR/sample.txt at the end.
Variant `runlocal`: a few steps. Data: ../shared/data/tiny_shakespeare (public-domain text).
Hardware: 2-core CPU (no GPU). Wall time and loss: see the README results table.
"""
import os

from lmx.config import base_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "tiny_shakespeare")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family, c.model.size, c.model.task = "transformer", "gpt-char", "causal_lm"
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.1
    c.peft.method = "full"
    c.data.kind = "text"
    c.data.tokenizer = "char"
    c.data.train_file = os.path.join(DATA, "input.txt")
    c.data.validation_fraction = 0.1
    c.data.max_length = 256
    c.data.sample_tokens = 300
    c.train.batch_size = 32
    c.train.eval_batch_size = 64
    c.train.num_steps = 1500
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.learning_rate = 1e-3
    c.train.decay = "cosine"
    c.train.warmup_fraction = 0.03
    c.train.weight_decay = 0.1
    c.train.log_every = 50
    for a in args:
        if a == "runlocal":
            c.train.num_steps = 20
            c.train.eval_every = 20
            c.data.max_length = 64
            c.data.sample_tokens = 40
        else:
            raise ValueError(f"experiments/tiny_shakespeare_gpt.py: unknown arg {a!r}")
    return c
