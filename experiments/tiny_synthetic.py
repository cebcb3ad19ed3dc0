"""A toy task on a tiny random-init BERT (no files needed): the smoke test of every code path.

Command: python -m lmx.main --config experiments/tiny_synthetic.py:runlocal --workdir /tmp/tiny
Args: `runlocal`, and one PEFT method (`lora` default, `full`, `bitfit`, `houlsby`,
`pfeiffer`, `prompt`, `prefix`, `ia3`). Hardware: CPU; seconds. Data: random token ids drawn
in code (lmx.data.examples.synthetic), no source, no licence.
"""
from lmx.config import base_config


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.size = "bert-tiny"
    c.data.kind = "synthetic"
    c.data.max_length = 16
    c.data.pad_multiple = 8
    c.peft.method = "lora"
    c.peft.num_prompt_tokens = 4
    c.peft.adapter_size = 8
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.train.num_epochs = 10
    c.train.learning_rate = 3e-3
    c.train.log_every = 10
    for a in args:
        if a == "runlocal":
            c.train.num_steps = 20
        elif a in ("full", "bitfit", "houlsby", "pfeiffer", "prompt", "prefix", "ia3", "lora"):
            c.peft.method = a
        else:
            raise ValueError(f"experiments/tiny_synthetic.py: unknown arg {a!r}")
    return c
