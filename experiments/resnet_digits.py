"""ResNet image classification on scikit-learn's bundled handwritten digits (offline, 10 classes).

Command: python -m lmx.main --config experiments/resnet_digits.py --workdir runs/resnet_digits
Args: `runlocal`; a PEFT method: `full` (default), `lora` (on every conv), `houlsby`
(adapters between stages), `bitfit` (BatchNorm biases + head).
The digits (UCI, 1,797 8x8 images, BSD-3 via scikit-learn) are upscaled to 32x32 RGB;
15% of each class is held out for validation. Hardware: CPU. Wall time and accuracy: not yet
measured for the full run (the runlocal variant is exercised by the tests).
"""
from lmx.config import base_config


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family = "resnet"
    c.model.size = "resnet18"
    c.model.image_size = 32
    c.data.kind = "digits"
    c.data.validation_fraction = 0.15
    c.peft.method = "full"
    c.peft.lora.targets = (r"params/.*conv.*/kernel",)
    c.peft.adapter_size = 16
    c.train.batch_size = 64
    c.train.eval_batch_size = 128
    c.train.num_epochs = 10
    c.train.learning_rate = 1e-3
    c.train.weight_decay = 1e-4
    c.train.log_every = 10
    for a in args:
        if a == "runlocal":
            c.model.size = "resnet-tiny"
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a in ("full", "lora", "houlsby", "bitfit"):
            c.peft.method = a
            if a != "full":
                c.train.learning_rate = 3e-3
        else:
            raise ValueError(f"experiments/resnet_digits.py: unknown arg {a!r}")
    return c
