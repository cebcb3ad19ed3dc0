"""Where a pretrained model lives: a local folder, an installed package that ships one, or a
HuggingFace hub id. Weights are read by `lmx.hf`, tokenizers by `lmx.hf.tokenizer`.
"""
from __future__ import annotations

import importlib.util
import pathlib

from lmx.hf.tokenizer import Tokenizer, load_tokenizer  # noqa: F401  (the one tokenizer loader)

HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "vocab.txt", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
             "special_tokens_map.json"]


def resolve_model_dir(name: str) -> pathlib.Path:
    """A local directory, an installed package that ships a model, or a HuggingFace hub id."""
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return path
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        package = pathlib.Path(list(spec.submodule_search_locations)[0])
        return package / "model" if (package / "model" / "config.json").is_file() else package
    try:
        import huggingface_hub  # lazily: only hub ids need it
        return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, malformed id: all mean "not found"
        raise FileNotFoundError(
            f"cannot find model {name!r}: not a local directory, not an installed Python package, "
            f"and the HuggingFace hub did not provide it ({type(error).__name__}: {error})"
        ) from error
