"""lmx's hashed dropout: Bernoulli statistics, independence across keys and neighbours, the
flax.linen.Dropout contract, and the same mask sharded as unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lmx.models.layers import Dropout, keep_mask

N = 1 << 20  # elements per mask: sigma of a keep fraction ~ 3e-4


def _sigma(p: float) -> float:
    return (p * (1 - p) / N) ** 0.5


def test_keep_fraction_matches_rate_for_several_rates_and_shapes():
    for rate, shape in [(0.1, (N,)), (0.5, (256, 4096)), (0.3, (8, 4, 128, 256))]:
        keep = np.asarray(keep_mask(jax.random.key(1), shape, rate))
        assert abs(keep.mean() - (1 - rate)) < 5 * _sigma(rate), (rate, keep.mean())


def test_masks_are_independent_across_keys_and_neighbouring_elements():
    rate, shape = 0.1, (64, 16384)
    a = np.asarray(keep_mask(jax.random.key(0), shape, rate)).ravel()
    b = np.asarray(keep_mask(jax.random.key(1), shape, rate)).ravel()
    agree = (a == b).mean()  # independent Bernoulli(0.9) masks agree 0.9**2 + 0.1**2 = 0.82
    assert abs(agree - 0.82) < 5 * _sigma(0.82), agree
    for lag in (1, 2, 16384):  # along a row, two apart, and down a column
        both = (a[:-lag] & a[lag:]).mean()
        assert abs(both - 0.81) < 6 * _sigma(0.81), (lag, both)
    assert not np.array_equal(a, b)


def test_dropout_module_contract():
    x = jnp.ones((128, 512))
    module = Dropout(0.25)
    assert module.apply({}, x, deterministic=True) is x
    assert Dropout(0.0).apply({}, x, deterministic=False) is x
    assert not Dropout(1.0).apply({}, x, deterministic=False).any()
    y = np.asarray(module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75])  # inverted: keeps the mean
    assert abs(y.mean() - 1.0) < 0.02
    y_again = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(y, y_again)  # a function of the key alone
    grad = jax.grad(lambda v: module.apply({}, v, deterministic=False,
                                           rngs={"dropout": jax.random.key(3)}).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), y)  # d/dx = mask / keep


def test_sharded_mask_equals_unsharded():
    shape, key = (8, 16, 64), jax.random.key(7)
    expected = np.asarray(keep_mask(key, shape, 0.1))
    mesh = jax.make_mesh((2, 4), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    out = jax.jit(lambda k: keep_mask(k, shape, 0.1),
                  out_shardings=NamedSharding(mesh, P("data", None, "model")))(key)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out), expected)



def test_lora_dropout_drops_the_lora_input_only():
    """As PEFT: `x @ W + b + scale * (dropout(x) @ A) @ B`, the base path undropped. With
    A = B = I (rank = in = out features, scale 1) the update is dropout(x) itself, which shows
    the mask; the same rng then drops the same elements for any A, B."""
    import flax.linen as nn

    from lmx.models.layers import Dense
    from lmx.peft import PeftSpec

    rate, width = 0.5, 8
    spec = PeftSpec(lora_rank=width, lora_alpha=float(width), lora_dropout=rate,
                    lora_targets=frozenset({"q"}))

    class Wrap(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic):
            return Dense(width, (None, None), peft=spec, name="q")(x, deterministic)

    x = jax.random.normal(jax.random.key(0), (64, width))
    params = {"q": {"kernel": jax.random.normal(jax.random.key(2), (width, width)),
                    "bias": jax.random.normal(jax.random.key(3), (width,))}}
    base = np.asarray(x) @ np.asarray(params["q"]["kernel"]) + np.asarray(params["q"]["bias"])

    def apply(a, b, deterministic):
        return np.asarray(Wrap().apply({"params": params, "peft": {"q": {"lora_a": a, "lora_b": b}}},
                                       x, deterministic, rngs={"dropout": jax.random.key(7)}))

    eye = jnp.eye(width)
    dropped_x = apply(eye, eye, False) - base  # dropout(x), if the base path is undropped
    kept = ~np.isclose(dropped_x, 0.0, atol=1e-5)
    np.testing.assert_allclose(dropped_x[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-4)
    assert 0.4 < kept.mean() < 0.6, kept.mean()  # 512 draws of keep probability 0.5
    a = jax.random.normal(jax.random.key(4), (width, width))
    b = jax.random.normal(jax.random.key(5), (width, width))
    np.testing.assert_allclose(apply(a, b, False), base + (dropped_x @ a) @ b, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(apply(a, b, True), base + (x @ a) @ b, rtol=1e-4, atol=1e-4)
