"""Test set-up: 8 fake CPU devices (before jax touches a backend) and strict rank promotion.

libtpu is in the test extra (tests compile for TPU topologies): JAX_PLATFORMS=cpu keeps the
default backend on the CPU, TPU_SKIP_MDS_QUERY=1 stops libtpu asking a metadata server, and
ALLOW_MULTIPLE_LIBTPU_LOAD=1 lets several processes load libtpu (else: a lockfile error)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # xdist workers, or a second session

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
