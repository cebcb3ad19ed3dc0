"""Causal-LM pre-training of a small GPT on tiny-shakespeare, characters as tokens.

Command:
  python -m lmx.main --config experiments/tiny_shakespeare_gpt.py --workdir runs/shakespeare_gpt
The corpus (1,115,394 characters, 65 distinct) is split 90 / 10 as nanoGPT does (the last
10% is validation); the model is a 4-layer, 256-wide GPT-2-style decoder ("gpt-char" in
lmx/models/transformer.py), 128-character context, batch 32, no dropout, 1,000 steps of AdamW 2e-3
with cosine decay (4.1M characters, ~4 passes over the training text). The
metric is validation loss in nats per character (= per token here); a 300-character sample
(temperature 0.8, top-k 40) is printed and written to WORKDIR/sample.txt at the end.
The run exports the decoder as a HF GPT-2 folder with its character vocabulary
(runs/shakespeare_gpt/hf), which variant `adapt` LoRA-adapts (r=8 on every linear layer) to
another domain, SST-2's movie-review sentences (text only, data as experiments/sst2.py; the 0.3%
of characters outside Shakespeare's 65, mostly digits, become "$", a count the run logs):
  python -m lmx.main --config experiments/tiny_shakespeare_gpt.py:adapt --workdir runs/shakespeare_sst2_lora
  (`adapt,full`: full fine-tuning instead; the pre-trained model alone on the same
  validation text: add `--config.train.learning_rate=0 --config.train.num_steps=1`)
Variant `runlocal`: a few steps. Data: char-rnn's tiny-shakespeare input.txt (Karpathy 2015;
public-domain text, MIT-licensed repository): ../shared/data/tiny_shakespeare/input.txt when
present, else tfds:tiny_shakespeare, its train+validation+test splits read as one text (the
same 1,115,394 characters; lmx.data.catalog), carved 90 / 10 the same way.
Measured (2-core CPU, no GPU): validation 1.610 nats/char (2.322 bits/char) at step 1,000,
26 min 27 s wall including start-up and four evaluations (1,493 s of training, 1.49 s/step);
2.041 / 1.798 / 1.660 at steps 250 / 500 / 750. The sample reads like the corpus' layout
(speaker names, verse lines) with half-made words.
"""
import os

from lmx.config import base_config
from lmx.data import catalog
from lmx.peft import ALL_LINEAR

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family, c.model.size, c.model.task = "transformer", "gpt-char", "causal_lm"
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.peft.method = "full"
    c.data.kind = "text"
    c.data.tokenizer = "char"
    c.data.update(catalog.data("tiny_shakespeare"))
    c.data.validation_fraction = 0.1
    c.data.max_length = 128
    c.data.sample_tokens = 300
    c.train.batch_size = 32
    c.train.eval_batch_size = 64
    c.train.num_steps = 1000
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.learning_rate = 2e-3
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
        elif a == "adapt":
            c.model.pretrained = os.path.join(REPO, "runs", "shakespeare_gpt", "hf")
            c.data.tokenizer, c.data.unknown_char = "", "$"
            c.data.train_split = "train"  # (the tfds fallback above read three splits)
            c.data.update(catalog.data("sst2"))
            c.peft.method, c.peft.lora.targets = "lora", ALL_LINEAR
            c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 300, 100, 100
            c.train.learning_rate = 2e-3
        elif a == "full":
            c.peft.method, c.train.learning_rate = "full", 5e-4
        else:
            raise ValueError(f"experiments/tiny_shakespeare_gpt.py: unknown arg {a!r}")
    return c
