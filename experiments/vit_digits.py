"""A Vision Transformer from the launcher: ViT-tiny trained from scratch on scikit-learn's
bundled handwritten digits (UCI, 1,797 8x8 images upscaled to 32x32, 10 classes; BSD-3 as
part of scikit-learn; no download).

Command:
  python -m lmx.main --config experiments/vit_digits.py --workdir runs/vit_digits
Variants (comma-separated arg): `runlocal` (seconds on a CPU); a PEFT method for a run that
starts from `--config.model.pretrained=DIR` (an HF ViT folder, e.g. the `hf/` export of a
full run): `lora`, `houlsby`, `bitfit` (default `full`).
Hardware: 2-core CPU. Not yet measured at full length: the family is exercised end to end by
tests/test_families.py (ViT-tiny learns digits past 50% validation accuracy in 400 steps of 64; 0.706 measured
with `--config.train.num_steps=400`, ~10 s on a 2-core AMD EPYC).
"""
from lmx.config import base_config


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family, c.model.size, c.model.image_size = "vit", "vit-tiny", 32
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.data.kind, c.data.validation_fraction = "digits", 0.15
    c.peft.method = "full"
    c.peft.adapter_size = 16
    c.train.batch_size, c.train.eval_batch_size = 64, 128
    c.train.num_epochs = 20
    c.train.learning_rate = 3e-3
    c.train.weight_decay = 1e-4
    c.train.log_every = 10
    for a in args:
        if a == "runlocal":
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a in ("full", "lora", "houlsby", "bitfit"):
            c.peft.method = a
        else:
            raise ValueError(f"experiments/vit_digits.py: unknown arg {a!r}")
    return c
