"""Multi-tenant LoRA on one frozen all-MiniLM-L6-v2: BANKING77, CLINC150, PhraseBank (issue 17).

One tenant alone, through the launcher (the arg picks it; default `banking77`):
  python -m lmx.main --config experiments/multi_tenant.py:clinc150 --config.seed=1 --workdir DIR
The three trained together in mixed batches, and alone, 3 seeds, scored on their own
validation splits: `python -m bench.multi_tenant` (bench/multi_tenant.py; the launcher runs
one task, so the mixed run is that script, built from these configs and lmx's pieces).

Every tenant keeps its own experiment's data (experiments/banking77_lora.py: a stratified 10%
of train.csv, seed 0, as validation, test.csv held out; clinc150.py: the official `val`
split, scored as in-scope accuracy; financial_phrasebank.py: Sentences_AllAgree, which has no
split, a fixed stratified 20% with numpy seed 0 as validation) and shares everything else,
so one optimizer serves the mixed run: LoRA r=8, alpha 16 on query / value, mean pooling,
max length 64, batch 32, STEPS steps (one BANKING77 epoch), AdamW 2e-3, 6% warmup, linear
decay, weight decay 0.01, no global-norm clip (it would couple the adapters in a mixed step,
so the tenants train without it alone too), one evaluation at the end.
Args: a tenant (`banking77`, `clinc150`, `phrasebank`), `runlocal` (a few steps).
Hardware: 2-core CPU. Measured: README "Many adapters on one base" (bench/RESULTS.md).
"""
import importlib.util
import os

STEPS = 280  # BANKING77: 9,003 training examples / 32 = 281 steps an epoch
TENANTS = {"banking77": "banking77_lora.py", "clinc150": "clinc150.py",
           "phrasebank": "financial_phrasebank.py"}
HERE = os.path.dirname(os.path.abspath(__file__))


def _experiment(name: str):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(HERE, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    unknown = [a for a in args if a not in TENANTS and a != "runlocal"]
    if unknown:
        raise ValueError(f"experiments/multi_tenant.py: unknown arg {unknown[0]!r}")
    tenants = [a for a in args if a in TENANTS] or ["banking77"]
    if len(tenants) > 1:
        raise ValueError(f"experiments/multi_tenant.py: one tenant per run, got {tenants}")
    c = _experiment(TENANTS[tenants[0]]).get_config("lora")
    c.model.pooling = "mean"
    c.peft.lora.rank, c.peft.lora.alpha, c.peft.lora.dropout = 8, 16.0, 0.0
    c.peft.lora.targets = (r"params/layer_\d+/attention/(query|value)/kernel",)
    c.data.max_length = 64
    c.train.batch_size = 32
    c.train.num_steps = STEPS
    c.train.num_epochs = 1.0  # unused (num_steps rules); one value for every tenant
    c.train.learning_rate = 2e-3
    c.train.warmup_fraction = 0.06
    c.train.decay = "linear"
    c.train.weight_decay = 0.01
    c.train.grad_clip_norm = 0.0
    c.train.eval_every = c.train.checkpoint_every = STEPS
    c.train.log_every = 50
    if "runlocal" in args:
        c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 10
        c.data.max_length = 32
    return c
