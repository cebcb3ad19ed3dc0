"""Low-memory loading: HF safetensors read tensor by tensor, slice by slice, into shardings.

`open_tensors` lists a checkpoint (one `model.safetensors`, or the shards a
`model.safetensors.index.json` names) as `LazyTensor`s: name, file, shape, stored dtype,
nothing read. `core.load` turns each into a `LazyLeaf` (the family's rule - transpose,
fused-part split - applied to indices, not data), and `place` builds the `jax.Array` with
`jax.make_array_from_callback`: each addressable device's slice is read from the memory-mapped
file (`safetensors.safe_open`, framework "numpy"), transposed and cast to the target dtype.
Host memory beyond what the devices hold is about one tensor (one device slice and the file
pages it touched), not the model; on several hosts each process reads only the slices its own
devices hold. The values equal `core.read_tensors` + `core.load` + `jax.device_put` bit for bit.

`index`: a tuple of slices, one per axis (what `make_array_from_callback` passes).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open

CHUNK_BYTES = 8 << 20  # a read's stored rows at a time
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """One tensor of a safetensors file, read only when (and where) asked."""
    file: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The slice `index` (default: all) at the stored dtype; the file is mapped only for
        the read, so its pages leave this process's memory afterwards."""
        with safe_open(self.file, framework="numpy") as f:
            if index is None or not self.shape:
                return f.get_tensor(self.name)
            return f.get_slice(self.name)[tuple(index)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.read()
        return array if dtype is None else array.astype(dtype)


def _bounds(index: Sequence[slice], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    out = []
    for s, n in zip(index, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"slice {s} has a step; shardings give contiguous slices")
        out.append((start, stop))
    return out


def _aligned_empty(shape: list[int], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """`np.empty` on a 64-byte boundary: a CPU device then takes the array as its buffer
    (zero-copy) instead of copying it, so a CPU load holds no second copy of the slice."""
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + size].view(dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class LazyLeaf:
    """An lmx variable taken from a `LazyTensor` through a rule: `perm` (lmx axis k is the
    stored axis perm[k]; a torch Linear's transpose, a conv's OIHW -> HWIO), `part` (i, n):
    the i-th of n equal chunks of the lmx last axis; cast to `dtype` when read."""
    tensor: LazyTensor
    perm: tuple[int, ...]
    part: tuple[int, int] | None
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, tensor: LazyTensor, kind: str, part: tuple[int, int] | None) -> "LazyLeaf":
        perm = {"copy": tuple(range(tensor.ndim)), "linear": tuple(reversed(range(tensor.ndim))),
                "conv": (2, 3, 1, 0)}[kind]
        shape = [tensor.shape[p] for p in perm]
        if part is not None:
            shape[-1] = shape[-1] // part[1] if shape[-1] % part[1] == 0 else -1
        return cls(tensor, perm, part, tuple(shape), np.dtype(tensor.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def astype(self, dtype) -> "LazyLeaf":
        return dataclasses.replace(self, dtype=np.dtype(dtype))

    def read(self, index: tuple[slice, ...] | None = None) -> np.ndarray:
        bounds = _bounds(index or (slice(None),) * self.ndim, self.shape)
        if self.part is not None:
            offset = self.part[0] * self.shape[-1]
            bounds[-1] = (bounds[-1][0] + offset, bounds[-1][1] + offset)
        if not self.shape:
            return np.asarray(self.tensor.read(), self.dtype)
        stored = [slice(None)] * self.ndim
        for k, p in enumerate(self.perm):
            stored[p] = slice(*bounds[k])
        out = _aligned_empty([hi - lo for lo, hi in bounds], self.dtype)
        # Rows of the stored axis 0 in chunks of ~CHUNK_BYTES, each read, transposed and cast
        # into `out`: host memory beyond `out` stays one chunk, whatever the tensor's size.
        lo, hi = bounds[self.perm.index(0)]
        row = self.tensor.dtype.itemsize * int(np.prod([b - a for a, b in bounds])) // max(
            hi - lo, 1)
        step = max(1, CHUNK_BYTES // max(row, 1))
        for start in range(lo, hi, step):
            stop = min(start + step, hi)
            piece = self.tensor.read((slice(start, stop), *stored[1:]))
            where = [slice(None)] * self.ndim
            where[self.perm.index(0)] = slice(start - lo, stop - lo)
            out[tuple(where)] = piece.transpose(self.perm)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.read()
        return array if dtype is None else array.astype(dtype)


@dataclasses.dataclass(frozen=True)
class LazyStack:
    """`num_layers` leaves stacked on a new leading axis (a scanned model's `layers/block`)."""
    leaves: tuple[Any, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.leaves), *self.leaves[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return self.leaves[0].dtype

    def astype(self, dtype) -> "LazyStack":
        return LazyStack(tuple(leaf.astype(dtype) for leaf in self.leaves))

    def read(self, index: tuple[slice, ...] | None = None) -> np.ndarray:
        index = index or (slice(None),) * len(self.shape)
        (lo, hi), rest = _bounds(index[:1], self.shape[:1])[0], tuple(index[1:])
        return np.stack([self.leaves[i].read(rest) for i in range(lo, hi)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.read()
        return array if dtype is None else array.astype(dtype)


LAZY = (LazyTensor, LazyLeaf, LazyStack)


def is_lazy(x: Any) -> bool:
    return isinstance(x, LAZY)


def open_tensors(model_dir: pathlib.Path, filename: str = "model") -> dict[str, LazyTensor]:
    """Every tensor of `{filename}.safetensors`, or of the shards `{filename}.safetensors.
    index.json` maps (else of every `{filename}*.safetensors`), as `LazyTensor`s."""
    index_file = model_dir / f"{filename}.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{index_file}: not a safetensors index (no weight_map)") from e
        files = sorted(set(weight_map.values()))
    else:
        weight_map, files = None, [p.name for p in sorted(model_dir.glob(f"{filename}*.safetensors"))]
    if not files:
        raise FileNotFoundError(f"no {filename}*.safetensors in {model_dir}")
    tensors: dict[str, LazyTensor] = {}
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{index_file} names {name}, which is not in {model_dir}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                    if weight_map is not None and weight_map.get(key) != name:
                        continue
                    piece = f.get_slice(key)
                    tensors[key] = LazyTensor(str(path), key, tuple(piece.get_shape()),
                                              np.dtype(_DTYPES[piece.get_dtype()]))
        except Exception as e:  # safetensors' own errors do not name the file
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if weight_map is not None and set(weight_map) - set(tensors):
        raise ValueError(f"{index_file} maps tensors its files lack: "
                         f"{sorted(set(weight_map) - set(tensors))[:10]}")
    return tensors


def place(leaf: Any, sharding: jax.sharding.Sharding, dtype=None) -> jax.Array:
    """`leaf` (lazy or an array) as a jax.Array laid out by `sharding`, cast to `dtype`
    (floating leaves only; default: the leaf's); a lazy leaf's slices are read per
    addressable device (each distinct slice once: replicated devices share the read)."""
    floating = jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)
    dtype = np.dtype(dtype if dtype is not None and floating else leaf.dtype)
    if not is_lazy(leaf):
        return jax.device_put(np.asarray(leaf, dtype), sharding)
    leaf = leaf.astype(dtype)
    slices: dict[tuple, np.ndarray] = {}

    def read(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple(_bounds(index, leaf.shape))
        if key not in slices:
            slices[key] = leaf.read(index)
        return slices[key]

    return jax.make_array_from_callback(tuple(leaf.shape), sharding, read)


def place_tree(tree: Any, shardings: Any, dtype=None) -> Any:
    """`place` over a tree of leaves and a matching tree of shardings, leaf after leaf (one
    tensor in host memory at a time)."""
    return jax.tree.map(lambda leaf, s: place(leaf, s, dtype), tree, shardings,
                        is_leaf=is_lazy)
