"""merge / unmerge of LoRA and IA3, unrolled and scanned (stacked-layer) models: the merged
model's outputs equal the unmerged one's, and unmerge gives the base weights back."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from lmx import peft as peft_lib
from lmx.models import transformer

L = 2
IA3 = peft_lib.PeftSpec(
    ia3_targets=frozenset(f"layer_{i}/{m}" for i in range(L)
                          for m in ("attention/key", "attention/value", "mlp/down")),
    ia3_feedforward=frozenset(f"layer_{i}/mlp/down" for i in range(L)))
LORA = peft_lib.PeftSpec(lora_rank=3, lora_alpha=6.0, lora_targets=frozenset(
    f"layer_{i}/{m}" for i in range(L) for m in ("attention/query", "mlp/up")))


@pytest.mark.parametrize("method", ["ia3", "lora"])
@pytest.mark.parametrize("scan", [False, True])
def test_merge_equals_unmerged_and_unmerge_restores(method, scan):
    spec = IA3 if method == "ia3" else LORA
    cfg = transformer.size("bert-tiny", dropout_rate=0.0, attention_dropout_rate=0.0,
                           scan_layers=scan)
    if scan:
        spec = peft_lib.scanned_spec(spec, L)
    module = transformer.Transformer(cfg, task="sequence_classification", num_labels=3,
                                     peft=spec)
    ids_BT = jax.random.randint(jax.random.key(0), (3, 7), 1, cfg.vocab_size)
    variables = nn.unbox(module.init(jax.random.key(1), ids_BT))
    keys = iter(jax.random.split(jax.random.key(2), 100))  # IA3 away from 1, LoRA B from 0
    variables["peft"] = jax.tree.map(
        lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), variables["peft"])
    unmerged = module.apply(variables, ids_BT)
    merge, unmerge = ((peft_lib.merge_ia3, peft_lib.unmerge_ia3) if method == "ia3"
                      else (peft_lib.merge_lora, peft_lib.unmerge_lora))
    merged_vars, merged_spec = merge(variables, spec)
    assert not (merged_spec.lora_rank or merged_spec.ia3_targets) and "peft" not in merged_vars
    merged = module.clone(peft=merged_spec).apply(merged_vars, ids_BT)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert np.abs(merged - module.clone(peft=peft_lib.NO_PEFT).apply(
        {"params": variables["params"]}, ids_BT)).max() > 1e-4  # the adapter mattered (10x TOL)
    restored = unmerge(merged_vars, variables, spec)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
                 restored["params"], variables["params"])
