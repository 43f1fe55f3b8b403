"""Model loading: the embedded SmolLM2-135M-Instruct (GGUF in a PyPI package) or any local model.

Where a model's files are, the embedded model's cache and the description of a model from its
files alone live in :mod:`workbench.model_files` (no torch); this module loads the model
(``from_pretrained`` with the workbench attention), checks its logits are finite and describes
the loaded model.

Nothing here downloads anything: Hugging Face ids resolve only from the local cache
(``local_files_only=True``), and a missing model is a :class:`ModelNotFoundError` that says
how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import probes
from probes import checks
from workbench.architectures import config_value, head_counts, spec_for
from workbench.errors import (
    CorruptWeightsError,
    ModelFilesError,
    ModelNotFoundError,
    WorkbenchError,
)
from workbench.model_files import (  # noqa: F401  (re-exported: the names loading code uses)
    EMBEDDED_ALIASES,
    EMBEDDED_GGUF,
    EMBEDDED_NAME,
    EMBEDDED_PACKAGE,
    ModelInfo,
    cache_dir,
    declared_model_type,
    describe_files,
    embedded_gguf_path,
    ensure_embedded_cache,
    load_embedded_from_gguf,
    model_name,
    resolve_source,
)
from workbench.model_parts import input_device, input_embedding

#: The placement strategies accelerate takes as ``device_map`` (anything else is one device).
MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

#: What ``device_map`` may be: a strategy name (``"auto"``, ``"balanced"``...), one device, or a
#: dict from module names (``""`` = the whole model) to devices.
DeviceMap = str | dict[str, str | int | torch.device]


def _map_devices(device_map: DeviceMap) -> set[str]:
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    return {f"cuda:{v}" if isinstance(v, int) else str(v) for v in values}


def check_load_arguments(
    name: str | os.PathLike | None,
    dtype: str | torch.dtype,
    device: str | torch.device | None,
    device_map: DeviceMap | None,
) -> tuple[str | None, torch.dtype, torch.device | None]:
    """Check everything :func:`workbench.load_model` takes before any file is read:
    ``(name as str, dtype, device)``. ``device`` must parse, not be ``"meta"``, agree with
    ``device_map`` and exist on this machine."""
    name = model_name(name)
    dtype_ = parse_dtype(dtype)
    device = checks.optional(checks.device, "device", device, check_available=False)
    check_placement(device, device_map)
    if device is not None:
        checks.device("device", device)
    if isinstance(device_map, dict):
        for key, value in device_map.items():
            if isinstance(value, int) and not isinstance(value, bool):
                value = f"cuda:{value}"
            if value != "disk":  # accelerate's offload target
                checks.device(f"device_map[{key!r}]", value)
    elif device_map is not None and device_map not in MAP_STRATEGIES:
        checks.device("device_map", device_map)
    return name, dtype_, device


def check_placement(device: str | torch.device | None, device_map: DeviceMap | None) -> None:
    """Refuse a ``device`` that contradicts ``device_map`` (a map places every module, so a
    device can only agree with it: every device the map names equals ``device``)."""
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise checks.ArgumentError(
            "device_map must be a strategy such as 'auto', one device, or a dict from module "
            f"names to devices, got {checks.describe(device_map)}"
        )
    if device is None or device_map is None:
        return
    device = checks.device("device", device, check_available=False)
    if _map_devices(device_map) != {str(torch.device(device))}:
        raise WorkbenchError(
            f"device={str(device)!r} and device_map={device_map!r} disagree: with a device_map "
            "the map places the model; pass device=None (or a device equal to every entry of "
            "the map)"
        )


@contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar for the duration, then restore it.

    Every load here reads local files (a cached copy or a saved folder), so the bar only adds
    noise to each CLI call; long work (the first dequantize, analyzers, reports) keeps its bars.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_placement(device, device_map)
    spec_for(declared_model_type(source))  # an unknown type is refused before any weight is read
    impl = probes.register()
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFilesError(
            f"could not load the tokenizer of {source!r}: {exc}. The folder needs the "
            "tokenizer files save_pretrained writes (tokenizer.json, tokenizer_config.json)"
        ) from exc
    try:
        with quiet_weight_loading():  # a local load takes well under a second: no bar
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation=impl, local_files_only=True, **placement
            )
    except SafetensorError as exc:
        raise ModelFilesError(
            f"the weights of {source!r} are unreadable (truncated or corrupt safetensors "
            f"file: {exc}); copy or save the model again"
        ) from exc
    except OSError as exc:
        raise ModelNotFoundError(f"could not load model from {source!r}: {exc}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelFilesError(f"could not load the model in {source!r}: {exc}") from exc
    if device_map is None:
        model.to(device or "cpu")
    model.eval()
    return model, tokenizer


#: Token ids of the probe prompt :func:`check_finite_logits` runs (taken modulo the vocabulary).
PROBE_IDS = (1, 100, 1000, 10000)


@torch.no_grad()
def check_finite_logits(model, name: str) -> None:
    """Refuse a model whose logits on a short probe prompt (a few tokens, one forward, no KV
    cache) hold NaN or inf: weights overwritten or corrupted on disk load without complaint
    and would give NaN everywhere. Costs one tiny forward (tens of ms for a 135M model)."""
    vocab = input_embedding(model).weight.shape[0]
    ids = torch.tensor([[i % vocab for i in PROBE_IDS]], device=input_device(model))
    logits = model(input_ids=ids, use_cache=False).logits
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise CorruptWeightsError(
            f"weights look corrupt: logits are not finite on a probe prompt ({bad} of "
            f"{logits.numel()} logits of {name} are NaN or inf); the weights file was "
            "overwritten or damaged: copy or save the model again"
        )


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
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if not isinstance(dtype, str) or dtype.lower() not in table:
        raise checks.ArgumentError(
            f"dtype must be one of {sorted(table)} or a floating torch dtype, "
            f"got {checks.describe(dtype)}"
        )
    return table[dtype.lower()]
