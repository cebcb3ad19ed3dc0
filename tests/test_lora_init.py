"""PiSSA / OLoRA initialisation and LoRA on the token table, against HF PEFT 0.21."""
import jax
import numpy as np
import peft
import pytest
import torch
from flax import traverse_util
from test_hf_adapters import TASK_TYPES, compare, round_trip
from test_hf_models import HEADS, batch, reference

import lmx.hf
import lmx.hf.__main__ as lmx_hf_main
from experiments import tiny_synthetic
from lmx import config as config_lib, peft as peft_lib, peft_init
from lmx.scale import sharding
from lmx.train import build

TOL = 1e-5
TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
TABLE = {"bert": "word_embeddings", "llama": "embed_tokens"}
TASK = {"bert": "sequence_classification", "llama": "causal_lm"}


def _peft_model(family, folder, **lora):
    """The HF base at folder/base and a PEFT model on it (lora: LoraConfig fields)."""
    base = reference(family, TASK[family], folder / "base")
    config = peft.LoraConfig(task_type=TASK_TYPES[TASK[family]], r=4, lora_alpha=8, **lora)
    torch.manual_seed(7)
    return peft.get_peft_model(base, config).eval()


def _perturb_and_save(model, folder):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder / "adapter")


def _peft_state(model):
    """{name: numpy} of PEFT's LoRA A / B and of the (residual) base kernels they adapt."""
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()
            if "lora_" in n or "base_layer.weight" in n}


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_olora_equal_peft_and_round_trip(family, init, tmp_path):
    hf_model = _peft_model(family, tmp_path, target_modules=TARGETS[family],
                           init_lora_weights=init)
    at_init = _peft_state(hf_model)
    _perturb_and_save(hf_model, tmp_path)
    # PEFT -> lmx: lmx recomputes the residual from the original base, as PEFT's load does
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert model.peft.lora_init == init
    error = compare("lora", family, TASK[family], hf_model, model, variables)
    print(f"{init} {family}: PEFT -> lmx max abs error {error:.2e}")
    assert error <= TOL

    # on the same base weights, lmx's A, B and residual equal PEFT's
    base_module, base = lmx.hf.from_pretrained(tmp_path / "base")
    residual, initial = peft_init.initial_lora(base, model.peft)
    flat_residual = traverse_util.flatten_dict(residual, sep="/")
    names = lmx.hf.adapters.hf_modules(lmx.hf.family_of_module(model), model)
    worst = 0.0
    for module_path, leaves in initial.items():
        hf = names[module_path][0]
        key = next(k for k in at_init if k.endswith(f"{hf}.lora_A.default.weight"))
        prefix = key.removesuffix("lora_A.default.weight")
        a_RI, b_OR = np.asarray(leaves["lora_a"]).T, np.asarray(leaves["lora_b"]).T
        if init == "pissa":  # singular vectors are defined up to sign: LAPACK's SVD under jax
            # and torch may flip a pair (u_r, v_r); b_r a_r and the residual agree regardless
            sign_R = np.sign(np.sum(a_RI * at_init[key], axis=1))
            a_RI, b_OR = a_RI * sign_R[:, None], b_OR * sign_R[None, :]
        for ours, theirs in ((a_RI, at_init[key]),
                             (b_OR, at_init[prefix + "lora_B.default.weight"]),
                             (flat_residual[f"{module_path}/kernel"].T,
                              at_init[prefix + "base_layer.weight"])):
            worst = max(worst, float(np.abs(np.asarray(ours) - theirs).max()))
    print(f"{init} {family}: A, B, residual vs PEFT's max abs error {worst:.2e}")
    assert worst <= TOL
    # the residual moved the base (a no-op init would pass the output check below)
    assert np.abs(flat_residual["layer_0/attention/query/kernel"]
                  - base["params"]["layer_0"]["attention"]["query"]["kernel"]).max() > 1e-3

    # at init, residual + s A B reconstructs W: the output is the base's
    ids_BT, mask_BT, types_BT = batch(family)
    start = {"params": residual, "peft": traverse_util.unflatten_dict(
        {tuple(p.split("/")) + (k,): v for p, leaves in initial.items()
         for k, v in leaves.items()})}
    at_start = model.apply(start, ids_BT, mask_BT, types_BT)
    base_out = base_module.apply(base, ids_BT, mask_BT, types_BT)
    assert np.abs(np.asarray(at_start) - np.asarray(base_out)).max() <= TOL

    # lmx -> PEFT (init_lora_weights kept: PEFT recomputes the residual on load) -> lmx
    trained = {"peft": variables["peft"]}
    if family == "bert":
        trained["params"] = {"head": variables["params"]["head"]}
    error = round_trip("lora", family, TASK[family], model, variables, trained, tmp_path)
    print(f"{init} {family}: lmx -> PEFT max abs error {error:.2e}")
    assert error <= TOL

    # `python -m lmx.hf` writes the residual base + the adapter as plain LoRA on it (PEFT's
    # "residual model" layout; a pissa config there would decompose the residual again)
    lmx_hf_main._save(model, variables, tmp_path / "export", merge=False, trained=trained)
    exported = peft.PeftModel.from_pretrained(
        HEADS[TASK[family]].from_pretrained(tmp_path / "export").eval(),
        tmp_path / "export" / "adapter")
    assert exported.peft_config["default"].init_lora_weights is True
    assert compare("lora", family, TASK[family], exported.eval(), model, variables) <= TOL

    # ... or converted to plain LoRA of rank 2r for the ORIGINAL base (PEFT's
    # path_initial_model_for_weight_conversion): PEFT loads it with init_lora_weights=True
    lmx.hf.save_adapter(model, trained, tmp_path / "plain", initial=initial)
    plain = peft.PeftModel.from_pretrained(
        HEADS[TASK[family]].from_pretrained(tmp_path / "base").eval(), tmp_path / "plain")
    assert plain.peft_config["default"].r == 8 and plain.peft_config[
        "default"].init_lora_weights is True
    error = compare("lora", family, TASK[family], plain.eval(), model, variables)
    print(f"{init} {family}: converted to plain LoRA, in PEFT: max abs error {error:.2e}")
    assert error <= TOL


def _planted(seed=0, shape_OI=(24, 16)):
    """A kernel with a clear rank-4 part (singular values 10, 8, 6, 4) plus small noise."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(shape_OI[0], 4)))[0]
    v = np.linalg.qr(rng.normal(size=(shape_OI[1], 4)))[0]
    w_OI = u @ np.diag([10.0, 8.0, 6.0, 4.0]) @ v.T + 1e-3 * rng.normal(size=shape_OI)
    return w_OI.astype(np.float32)


def test_pissa_niter_product_equals_peft_and_exact_pissa():
    """pissa_niter_K draws a random test matrix (torch's RNG in PEFT, a jax key here), so A and
    B differ from PEFT's by a rotation within the rank-r subspace: the product s B A and the
    residual are what must agree, on a kernel whose top-4 subspace is well defined."""
    w_OI = _planted()

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 24, bias=False)
            self.lin.weight.data = torch.from_numpy(w_OI.copy())

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    hf = peft.get_peft_model(One(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["lin"],
                                                    init_lora_weights="pissa_niter_4"))
    layer = hf.base_model.model.lin
    theirs = 2.0 * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
    theirs_residual = layer.base_layer.weight.detach().numpy()
    a, b, residual = peft_init.decompose(w_OI.T, 4, 2.0, "pissa_niter_4", jax.random.key(3))
    ours = 2.0 * np.asarray(a @ b).T
    np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=TOL)
    np.testing.assert_allclose(np.asarray(residual).T, theirs_residual, atol=TOL)
    np.testing.assert_allclose(np.asarray(residual) + 2.0 * np.asarray(a @ b), w_OI.T, atol=1e-6)
    exact_a, exact_b, _ = peft_init.decompose(w_OI.T, 4, 2.0, "pissa", None)
    np.testing.assert_allclose(np.asarray(exact_a @ exact_b), np.asarray(a @ b), atol=TOL)


def _tiny_config(init):
    config = tiny_synthetic.get_config("lora")
    config.peft.lora.init = init
    config.peft.lora.rank_pattern = ((r"params/layer_1/attention/value/kernel", 2),)
    return config


def test_build_applies_the_init_to_the_base_in_place():
    """build.create on tiny_synthetic: the trainer's model starts with PiSSA's A, B on the
    base the default init builds (same seed) and the residual in the frozen params."""
    config = _tiny_config("default")
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_for(config.sharding)
    plain = build.create(config, 2, mesh, rules, jax.random.key(0))
    pissa = build.create(_tiny_config("pissa"), 2, mesh, rules, jax.random.key(0))
    spec = pissa.module.peft
    assert spec.lora_init == "pissa" and dict(spec.lora_rank_pattern)
    for path in sorted(spec.lora_targets):
        node = lambda tree: [tree := tree[k] for k in path.split("/")][-1]  # noqa: E731
        w = np.asarray(node(plain.variables["params"])["kernel"])
        rank, scale = spec.lora_rank_of(tuple(path.split("/"))), spec.lora_scale_of(
            tuple(path.split("/")))
        a, b, residual = peft_init.decompose(w, rank, scale, "pissa", None)
        got = node(pissa.variables["peft"])
        np.testing.assert_allclose(np.asarray(got["lora_a"]), np.asarray(a), atol=1e-6)
        np.testing.assert_allclose(np.asarray(got["lora_b"]), np.asarray(b), atol=1e-6)
        np.testing.assert_allclose(np.asarray(node(pissa.variables["params"])["kernel"]),
                                   np.asarray(residual), atol=1e-6)
        assert got["lora_a"].shape[-1] == rank


@pytest.mark.parametrize("change,message", [
    ({"peft.lora.init": "pissa_niter_x"}, "is not one of"),
    ({"peft.lora.init": "pissa", "peft.lora.dora": True}, "dora=True is not built"),
    ({"peft.lora.init": "olora", "model.quantize_base": "nf4"}, "quantize_base='none'"),
    ({"peft.lora.init": "pissa", "model.scan_layers": True}, "scan_layers=False")])
def test_unsupported_inits_are_refused_by_key(change, message):
    config = tiny_synthetic.get_config("lora")
    for key, value in change.items():
        section, name = key.rsplit(".", 1)
        node = config
        for part in section.split("."):
            node = node[part]
        node[name] = value
    with pytest.raises(ValueError, match=r"config\.peft\.lora\.init=.*" + message):
        config_lib.validate(config, 1)


def test_randomized_pissa_is_refused_in_peft_folders(tmp_path):
    """A pissa_niter adapter: PEFT's own load draws another residual, so lmx refuses the
    folder; an lmx one is saved only converted (initial=)."""
    hf_model = _peft_model("llama", tmp_path, target_modules=["q_proj"],
                           init_lora_weights="pissa_niter_2")
    hf_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="init_lora_weights='pissa_niter_2'.*randomized"):
        lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    module, variables = lmx.hf.from_pretrained(tmp_path / "base")
    spec = peft_lib.PeftSpec(lora_rank=2, lora_targets=frozenset({"layer_0/attention/query"}),
                             lora_init="pissa_niter_2")
    residual, initial = peft_init.initial_lora(variables, spec)
    with pytest.raises(ValueError, match="pass initial="):
        lmx.hf.save_adapter(module.clone(peft=spec), {"peft": {"layer_0": {"attention": {
            "query": initial["layer_0/attention/query"]}}}}, tmp_path / "out")


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_lora_on_the_token_table_equals_peft_and_merges(family, tmp_path):
    hf_model = _peft_model(family, tmp_path, target_modules=[TABLE[family], TARGETS[family][0]])
    table = hf_model.get_input_embeddings()
    assert float(table.lora_embedding_A["default"].abs().max()) == 0.0  # PEFT's init: A = 0
    _perturb_and_save(hf_model, tmp_path)
    model, variables = lmx.hf.from_pretrained(tmp_path / "base", adapter=tmp_path / "adapter")
    assert peft_lib.TOKEN_TABLE in model.peft.lora_targets
    error = compare("lora", family, TASK[family], hf_model, model, variables)
    print(f"token-table LoRA {family}: PEFT -> lmx max abs error {error:.2e}")
    assert error <= TOL
    trained = {"peft": variables["peft"]}
    if family == "bert":
        trained["params"] = {"head": variables["params"]["head"]}
    error = round_trip("lora", family, TASK[family], model, variables, trained, tmp_path)
    print(f"token-table LoRA {family}: lmx -> PEFT max abs error {error:.2e}")
    assert error <= TOL

    # merge: the table gains s A B (PEFT's merged table), outputs unchanged
    ids_BT, mask_BT, types_BT = batch(family)
    merged_vars, merged_spec = peft_lib.merge_lora(variables, model.peft)
    merged = model.clone(peft=merged_spec).apply(merged_vars, ids_BT, mask_BT, types_BT)
    unmerged = model.apply(variables, ids_BT, mask_BT, types_BT)
    assert np.abs(np.asarray(merged) - np.asarray(unmerged)).max() <= TOL
    peft_table = hf_model.merge_and_unload().get_input_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(merged_vars["params"]["embed"]["token"]["embedding"],
                               peft_table, atol=TOL)


def test_lora_on_a_tied_token_table_is_refused(tmp_path):
    """A Llama with tied input / output tables (Llama 3.2 1B ties): the head would
    read the base table unmerged but the adapted one merged, so it is refused by name."""
    reference("llama3-rope", "causal_lm", tmp_path / "base")
    module, variables = lmx.hf.from_pretrained(tmp_path / "base")
    assert module.cfg.tie_embeddings
    spec = peft_lib.PeftSpec(lora_rank=2, lora_targets=frozenset({peft_lib.TOKEN_TABLE}))
    ids_BT, mask_BT, types_BT = batch("llama")
    with pytest.raises(ValueError, match=r"token table \(embed/token\).*tied"):
        module.clone(peft=spec).init(jax.random.key(0), ids_BT)
