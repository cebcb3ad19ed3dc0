"""NF4 / int8 round-trip errors of lmx.quant next to bitsandbytes' on one (96, 200) N(0, 0.05) weight.

  JAX_PLATFORMS=cpu python bench/qlora_roundtrip.py   (needs bitsandbytes: the test extra)
"""
import sys, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np, torch, jax, jax.numpy as jnp
import bitsandbytes.functional as F
from lmx import quant
print(np.array_equal(F.get_4bit_type("nf4", device="cpu").numpy(), quant.NF4_CODE))
rng = np.random.default_rng(0)
w = (rng.standard_normal((96, 200)) * 0.05).astype(np.float32)  # torch (O, I)
p, st = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4")
q = quant.nf4_quantize(jnp.asarray(w), 64)
print(p.shape, p.dtype, np.array_equal(p.numpy().reshape(-1), np.asarray(q["codes"])),
      np.array_equal(st.absmax.numpy(), np.asarray(q["absmax"])))
d = F.dequantize_4bit(p, st).numpy()
print(np.array_equal(d, np.asarray(quant.nf4_dequantize(q, w.shape))))
print("rt err bnb", np.abs(d - w).mean(), "lmx", np.abs(np.asarray(quant.nf4_dequantize(q, w.shape)) - w).mean())
p2, st2 = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4", compress_statistics=True)
d2 = F.dequantize_4bit(p2, st2).numpy()
q2 = quant.nf4_quantize(jnp.asarray(w), 64, double=True)
print("dq", np.abs(d2-w).mean(), np.abs(np.asarray(quant.nf4_dequantize(q2, w.shape))-w).mean())
c8, s8, _ = F.int8_vectorwise_quant(torch.from_numpy(w))
qi = quant.int8_quantize(jnp.asarray(w.T))
print("int8", np.array_equal(c8.numpy(), np.asarray(qi["codes"]).T), np.array_equal(s8.numpy(), np.asarray(qi["absmax"])))
di = F.int8_vectorwise_dequant(c8, s8).numpy()
print(np.array_equal(di, np.asarray(quant.int8_dequantize(qi)).T), np.abs(di - np.asarray(quant.int8_dequantize(qi)).T).max())
print("int8 mean abs err lmx", np.abs(np.asarray(quant.int8_dequantize(qi)).T - w).mean(), "bnb", np.abs(di - w).mean())
