"""A LoRA train step compiled by the TPU compiler for a TPU topology, on this CPU (libtpu from
the test extra; no TPU). Skipped with the reason off CI when libtpu is missing, failed under
CI=true, so CI always compiles for a TPU."""
import importlib.util
import os

import jax
import pytest

from lmx.models import transformer
from lmx.scale import aot


def _require_libtpu():
    if importlib.util.find_spec("libtpu") is not None:
        return
    message = "needs libtpu (pip install -c requirements/lock.txt -e '.[test]')"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the test extra installs it)")
    pytest.skip(message)


def test_lora_step_compiles_for_v5e_2x2_with_donated_state_and_bf16_base():
    _require_libtpu()
    assert jax.default_backend() == "cpu"  # libtpu beside jax does not move the default
    plan = lambda accum: aot.plan_config("llama-tiny", "fsdp", "full", batch=8, seq_len=128,
                                         grad_accum=accum, rank=4)
    report = aot.compile_for_topology(plan(2), "v5e:2x2")
    assert (report["device_kind"], report["devices"]) == ("TPU v5 lite", 4)
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    cfg = transformer.SIZES["llama-tiny"]
    base = (cfg.vocab_size * cfg.embed_dim * 2  # token table and LM head
            + cfg.num_layers * cfg.embed_dim * (2 * cfg.num_heads * cfg.head_dim
                                                + 2 * cfg.kv_heads * cfg.head_dim
                                                + 3 * cfg.mlp_dim))
    # bf16 and split 4 ways over fsdp (norm gains, a few KB, replicated)
    assert base * 2 / 4 <= report["per_device_frozen_bytes"] < base * 2 / 4 + 4096
    # The program takes the sharded base and state, and updates the donated state in place.
    assert report["argument_bytes"] >= (report["per_device_frozen_bytes"]
                                        + report["per_device_state_bytes"])
    assert report["alias_bytes"] >= report["per_device_state_bytes"] > 0
    assert report["per_device_opt_state_bytes"] > 0
    assert report["fits"] and report["peak_bytes"] <= 16 * 2**30
    # FLOPs: the compiler counts a loop body once (one of 2 scanned layers, one of 2
    # micro-batches); the step's count adds them up, so accumulation does not change it.
    whole = aot.compile_for_topology(plan(1), "v5e:2x2")
    assert report["compiler_flops_loop_bodies_once"] < 0.6 * whole[
        "compiler_flops_loop_bodies_once"]
    assert whole["flops_per_device_step"] > 1.5 * whole["compiler_flops_loop_bodies_once"]
    assert abs(report["flops_per_device_step"] / whole["flops_per_device_step"] - 1) < 0.03
