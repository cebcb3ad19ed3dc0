"""MovieLens ml-latest-small next-item recommendation: BERT4Rec (masked items) from scratch.

Command:
  python -m lmx.main --config experiments/movielens_rec.py --workdir runs/movielens_rec
Variants through the arg string: `runlocal` (a few steps on a CPU).

Data: ratings.csv of ml-latest-small (GroupLens), expected at
../shared/data/movielens_ml_latest_small/ratings.csv next to the repository; point elsewhere
with `--config.data.train_file=PATH/ratings.csv`.

Protocol: leave-one-out (last item = test, second to last = validation), full ranking over
all items with the user's earlier items excluded (lmx/recsys.py); the run also reports a
popularity baseline under the same protocol (results.json "popularity_baseline").

Hardware: 2-core CPU (no GPU). Wall time and metrics: TBD.
"""
import os

from lmx.config import base_config

RATINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                       "movielens_ml_latest_small", "ratings.csv")


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = base_config()
    c.model.family = "transformer"
    c.model.size = "bert4rec"
    c.model.task = "mlm"
    c.model.pretrained = ""
    c.model.pooling = "mean"  # no pooler: the masked-item head reads every position
    c.model.dropout_rate = 0.1
    c.model.attention_dropout_rate = 0.1
    c.peft.method = "full"

    c.data.kind = "movielens"
    c.data.train_file = os.path.normpath(RATINGS)
    # Rows of 20 items (BERT4Rec used 200 on ML-1M): every training rating still lands in
    # one row per epoch (chunks), and the next item depends mostly on the last few ratings.
    c.data.max_length = 20
    c.data.pad_multiple = 20  # one row width, one compiled shape
    c.data.mlm_rate = 0.3

    c.train.batch_size = 64
    c.train.eval_batch_size = 128
    c.train.num_epochs = 20  # context use sets in after ~8 epochs; before, it is popularity
    c.train.learning_rate = 3e-3
    c.train.warmup_fraction = 0.05
    c.train.weight_decay = 0.01
    c.train.log_every = 82

    for a in args:
        if a == "runlocal":
            c.train.num_steps = 10
            c.train.log_every = 5
        else:
            raise ValueError(f"experiments/movielens_rec.py: unknown arg {a!r}")
    return c
