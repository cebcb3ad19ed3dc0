"""ResNet image classification: pre-train, then adapt (full fine-tuning vs LoRA / adapters /
BitFit), next to the same network trained from random init on the same budget.

No pretrained ResNet can be downloaded here, so the transfer is staged in miniature: stage 1
(`pretrain`) trains ResNet-18 fully on the first five classes and exports it as a HF ResNet
folder (WORKDIR/hf, which `config.model.pretrained` reads like any ResNetForImageClassification
checkpoint); stage 2 adapts it to the other five classes, which it has never seen.
Commands (digits, offline; add `cifar10` to every arg list for the real dataset):
  python -m lmx.main --config experiments/resnet_images.py:pretrain --workdir runs/resnet_pretrain
  python -m lmx.main --config experiments/resnet_images.py:full --workdir runs/resnet_full
  (`:bitfit`, `:houlsby`, `:lora`, and `:scratch` = full training from random init)
Data: `digits` (default): scikit-learn's bundled handwritten digits (UCI, 1,797 8x8 images,
BSD-3), upscaled to 32x32 RGB, 15% of each stage's classes held out for validation;
`cifar10`: tfds cifar10 (50,000 train / 10,000 test 32x32 images; the first use downloads and
prepares it: `pip install -e .[tfds-prepare]`), validation = its test split.
Stage 2 loads `runs/resnet_pretrain/hf` (`runs/resnet_pretrain_cifar10/hf` with `cifar10`);
`runlocal`: a tiny ResNet, a few steps, no pretrained weights.
Measured (2-core CPU, digits; 134 validation images of 5-9): pretrain on 0-4 (20 epochs,
265 s) 1.000 on its own validation; adapting (10 epochs): full fine-tuning 0.993 (136 s),
Houlsby adapters 0.918 (0.31% trainable, 107 s), BitFit 0.724 (BatchNorm biases + head,
0.07%, 114 s); from random init (`scratch`) 0.985 (130 s). Digits are easy enough that
pre-training buys under a point here; BitFit's BatchNorm biases alone cannot re-purpose
the features for new classes.
"""
import os

from lmx.config import base_config

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIRST, SECOND = "0,1,2,3,4", "5,6,7,8,9"


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family, c.model.size, c.model.image_size = "resnet", "resnet18", 32
    c.data.kind, c.data.validation_fraction = "digits", 0.15
    c.data.keep_labels = SECOND
    c.peft.method = "full"
    c.peft.lora.targets = (r"params/.*conv.*/kernel",)
    c.peft.adapter_size = 16
    c.train.batch_size, c.train.eval_batch_size = 64, 128
    c.train.num_epochs = 20
    c.train.learning_rate = 1e-3
    c.train.weight_decay = 1e-4
    c.train.log_every = 10
    stage, cifar = "adapt", "cifar10" in args
    if cifar:
        c.data.kind, c.data.train_file = "images", "tfds:cifar10"
        c.data.validation_split = "test"
        c.train.num_epochs = 3
    for a in args:
        if a == "runlocal":
            c.model.size = "resnet-tiny"
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a == "pretrain":
            stage = "pretrain"
            c.data.keep_labels = FIRST
        elif a == "scratch":
            stage = "scratch"
        elif a in ("full", "lora", "houlsby", "bitfit"):
            c.peft.method = a
            if a != "full":
                c.train.learning_rate = 3e-3
        elif a != "cifar10":
            raise ValueError(f"experiments/resnet_images.py: unknown arg {a!r}")
    if stage != "pretrain" and not cifar:
        c.train.num_epochs = 10  # adapting: half the pre-training budget
    if stage == "adapt" and "runlocal" not in args:
        c.model.pretrained = os.path.join(
            REPO, "runs", "resnet_pretrain_cifar10" if cifar else "resnet_pretrain", "hf")
    return c
