"""MovieLens ml-latest-small next-item recommendation: BERT4Rec (masked items) from scratch.

Command:
  python -m lmx.main --config experiments/movielens_rec.py --workdir runs/movielens_rec
Variant `runlocal`: 10 steps (30 s on the CPU below; the numbers mean nothing).

Data: ratings.csv of ml-latest-small (GroupLens, Harper & Konstan 2015; 610 users, 9,724
movies, 100,836 ratings; GroupLens' usage licence: research use, no commercial use, cite the
paper; not shipped with lmx): ../shared/data/movielens_ml_latest_small/ratings.csv when
present, else tfds:movielens/latest-small-ratings (its records mapped to the same columns
and put in ratings.csv's order; lmx.data.catalog). Elsewhere:
`--config.data.train_file=PATH/ratings.csv`.

Protocol (lmx/tasks/recsys.py): leave-one-out (last rating = test, second to last = validation),
the model's scores at an appended [MASK] rank all 9,724 movies (no sampled negatives) with
the user's earlier movies excluded; results.json also holds "popularity_baseline", the
training-count ranking under the same protocol.

Hardware: 2-core AMD EPYC CPU (no GPU), nice 19 on a shared machine. 20 epochs = 1,640
steps of 64 rows: 37.6 min wall (2,050 s training at 51 rows/s, slowed by other jobs; the same
run trains at ~165 rows/s on a quieter machine: about 11 min). Deterministic: a rerun
gave the same numbers.
                     HR@1    HR@10   NDCG@10
  validation model   0.0115  0.0623  0.0322
             popular 0.0066  0.0311  0.0172
  test       model   0.0131  0.0689  0.0358
             popular 0.0033  0.0410  0.0188
610 users per split: one hit is 0.0016 of HR; HR@10's standard error is about 0.01.
Validation HR@10 per epoch stays at the popularity level for ~8 epochs, then climbs to
0.06-0.075 (epochs 11-20).
"""
from lmx.config import base_config
from lmx.data import catalog


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
    c.data.update(catalog.data("movielens"))
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
