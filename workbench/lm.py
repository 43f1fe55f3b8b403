"""The workbench's handle on one model: tokenizing, forward passes and probes, one way through.

``load_model`` returns a :class:`LoadedModel`; notebooks, the CLI and the app all go through it:
prompt -> :meth:`LoadedModel.encode` -> forward with the registered attention function ->
probe records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import probes
from probes import Capture, CaptureSpec, ModelLayout, Statistics, StatisticsSpec
from workbench.architectures import layout_of
from workbench.errors import EmptyPromptError, PromptTooLongError
from workbench.generation import greedy_generate
from workbench.heads import head_id
from workbench.model_parts import input_device
from workbench.models import (
    DeviceMap,
    ModelInfo,
    check_placement,
    describe,
    load_hf,
    parse_dtype,
    resolve_source,
)


def _as_tuple(items: Iterable[int] | int | None) -> tuple[int, ...] | None:
    if items is None:
        return None
    return (items,) if isinstance(items, int) else tuple(items)


@dataclass(frozen=True)
class Encoded:
    """A tokenized prompt.

    ``input_ids`` and ``attention_mask`` are (1, L); ``tokens`` holds the L token strings as
    the tokenizer decodes each id alone (leading spaces kept: ``" cat"``); ``text`` is the
    exact string that was tokenized (with the chat template applied when ``chat``).
    """

    input_ids: Tensor
    attention_mask: Tensor
    tokens: list[str]
    text: str
    chat: bool

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class LoadedModel:
    """A causal LM driven through the workbench attention path.

    Attributes:
        model: the Hugging Face model (``attn_implementation="workbench"``).
        tokenizer: its tokenizer.
        info: :class:`ModelInfo` (architecture, layers, heads, KV heads, head dim, context).
        layout: :class:`probes.ModelLayout` (where attention lives).
        load_seconds: wall time the load took.
    """

    def __init__(self, model: nn.Module, tokenizer, info: ModelInfo, load_seconds: float = 0.0):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.layout: ModelLayout = layout_of(model)
        self.load_seconds = load_seconds

    def __repr__(self) -> str:
        i = self.info
        return (
            f"LoadedModel({i.name}: {i.architecture}, {i.n_layers} layers x {i.n_heads} heads "
            f"({i.n_kv_heads} KV), head_dim {i.head_dim}, context {i.max_context})"
        )

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embedding (the blocks may sit on other
        devices under a ``device_map``)."""
        return input_device(self.model)

    def head_id(self, layer: int, head: int) -> str:
        """``L{layer}H{head}`` after checking both are in range."""
        self.layout.check_layers([layer])
        self.layout.check_heads([head])
        return head_id(layer, head)

    # -- prompts ---------------------------------------------------------------------------
    def encode(
        self, prompt: str | Encoded, *, chat: bool = False, system: str | None = None
    ) -> Encoded:
        """Tokenize ``prompt`` with the tokenizer's defaults (chat template only if ``chat``).

        Raises :class:`EmptyPromptError` for an empty prompt and :class:`PromptTooLongError`
        when it has more tokens than the model's context.
        """
        if isinstance(prompt, Encoded):
            return prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise EmptyPromptError("the prompt is empty; give some text to run the model on")
        text = prompt
        if chat:
            messages = [{"role": "user", "content": prompt}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
        ids = enc["input_ids"]
        n = int(ids.shape[1])
        if n == 0:
            raise EmptyPromptError("the prompt tokenized to zero tokens")
        if n > self.info.max_context:
            raise PromptTooLongError(
                f"the prompt has {n} tokens, more than {self.info.name}'s context of "
                f"{self.info.max_context} tokens; shorten it"
            )
        tokens = [self.tokenizer.decode([int(t)]) for t in ids[0]]
        return Encoded(ids, enc["attention_mask"], tokens, text, chat)

    # -- forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, prompt: str | Encoded, *, chat: bool = False) -> Tensor:
        """Logits (1, L, V) of one forward pass through the workbench attention path."""
        enc = self.encode(prompt, chat=chat)
        out = self.model(
            input_ids=enc.input_ids.to(self.device),
            attention_mask=enc.attention_mask.to(self.device),
            use_cache=False,
        )
        return out.logits

    def generate(
        self, prompt: str | Encoded, *, max_new_tokens: int = 20, chat: bool = False
    ) -> str:
        """Greedy continuation of ``prompt`` (KV cache on), decoded without special tokens
        (:func:`workbench.generation.greedy_generate`).

        Probes and interventions active around the call act on every decode step.
        """
        enc = self.encode(prompt, chat=chat)
        (new,) = greedy_generate(self, [enc], max_new_tokens=max_new_tokens)
        return self.tokenizer.decode(new, skip_special_tokens=True)

    # -- probes ----------------------------------------------------------------------------
    def capture(
        self,
        layers: Iterable[int] | int | None = None,
        heads: Iterable[int] | int | None = None,
        *,
        maps: bool = True,
        query_window: tuple[int, int] | None = None,
        qkv: bool = False,
        z: bool = False,
        device: str | torch.device | None = "cpu",
        max_bytes: int | None = None,
    ) -> Capture:
        """A :class:`probes.Capture` context manager on this model; see :class:`CaptureSpec`."""
        probes.require_workbench_attention(self.model)
        spec = CaptureSpec(
            layers=_as_tuple(layers),
            heads=_as_tuple(heads),
            maps=maps,
            query_window=query_window,
            qkv=qkv,
            z=z,
            device=device,
            max_bytes=max_bytes,
        )
        return Capture(self.layout, spec)

    def statistics(
        self,
        layers: Iterable[int] | int | None = None,
        *,
        received: bool = True,
        entropy: bool = True,
        argmax: bool = True,
        spans: Iterable[tuple[int, int]] = (),
        distance: bool = True,
        pooled_block: int | None = None,
        lse: bool = False,
        device: str | torch.device | None = "cpu",
    ) -> Statistics:
        """A :class:`probes.Statistics` context manager: head statistics of every head of
        ``layers`` from the kernels (no L x L maps); see :class:`probes.StatisticsSpec`."""
        probes.require_workbench_attention(self.model)
        spec = StatisticsSpec(
            layers=_as_tuple(layers),
            received=received,
            entropy=entropy,
            argmax=argmax,
            spans=tuple((int(a), int(b)) for a, b in spans),
            distance=distance,
            pooled_block=pooled_block,
            lse=lse,
            device=device,
        )
        return Statistics(self.layout, spec)

    def run_statistics(
        self, prompt: str | Encoded, *, chat: bool = False, **statistics_kwargs
    ) -> tuple[Encoded, probes.ProbeRecords]:
        """Encode, run one forward with a :meth:`statistics` probe, return the records."""
        enc = self.encode(prompt, chat=chat)
        with self.statistics(**statistics_kwargs) as stats:
            self.forward(enc)
        return enc, stats.records

    def run_capture(
        self, prompt: str | Encoded, *, chat: bool = False, **capture_kwargs
    ) -> tuple[Encoded, probes.ProbeRecords]:
        """Encode, check the capture fits in memory, run one forward, return the records."""
        enc = self.encode(prompt, chat=chat)
        cap = self.capture(**capture_kwargs)
        cap.check_fits(enc.n_tokens)
        with cap:
            self.forward(enc)
        return enc, cap.records


def wrap_model(model: nn.Module, tokenizer, name: str | None = None) -> LoadedModel:
    """Drive an already-loaded Hugging Face causal LM through the workbench attention path."""
    start = time.perf_counter()
    model.set_attn_implementation(probes.register())
    model.eval()
    name = name or getattr(model.config, "name_or_path", None) or model.config.model_type
    info = describe(model, str(name), str(getattr(model.config, "name_or_path", "")))
    return LoadedModel(model, tokenizer, info, time.perf_counter() - start)


def load_model(
    name: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: DeviceMap | None = None,
) -> LoadedModel:
    """Load a model for the workbench.

    Args:
        name: None (or ``"smollm2"``) for the embedded SmolLM2-135M-Instruct; otherwise a local
            folder or a Hugging Face id already in the local cache (never downloaded).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        device: e.g. ``"cuda"``; None = ``"cpu"`` unless ``device_map`` places the model.
        device_map: for models that do not fit one device: ``"auto"`` or a dict from module
            names to devices, passed to ``from_pretrained`` (accelerate); ``device`` is then
            not applied, and giving one that disagrees with the map is an error. Inputs go to
            the input embedding's device (:attr:`LoadedModel.device`).

    Raises:
        ModelNotFoundError: the model is not available locally (the message says how to get it).
        UnsupportedArchitectureError: its ``model_type`` is not in the architecture table.
        WorkbenchError: ``device`` and ``device_map`` disagree.
    """
    check_placement(device, device_map)
    display, source = resolve_source(name)  # may build the embedded cache once (slow)
    start = time.perf_counter()
    model, tokenizer = load_hf(source, parse_dtype(dtype), device, device_map)
    info = describe(model, display, source)
    return LoadedModel(model, tokenizer, info, time.perf_counter() - start)
