"""The workbench's handle on one model: tokenizing, forward passes and probes, one way through.

``load_model`` returns a :class:`LoadedModel`; notebooks, the CLI and the app all go through it:
prompt -> :meth:`LoadedModel.encode` -> forward with the registered attention function ->
probe records.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import probes
from kernels.errors import KernelInputError
from probes import Capture, CaptureSpec, ModelLayout, Statistics, StatisticsSpec
from probes.checks import (
    ArgumentError,
    boolean,
    describe,
    encodable,
    integer,
    optional,
    text,
    unknown_keywords,
)
from workbench.architectures import layout_of
from workbench.batching import captures_over, check_batch_size, statistics_over
from workbench.errors import (
    EmptyPromptError,
    HeadOutOfRangeError,
    LayerOutOfRangeError,
    ProbeError,
    PromptTooLongError,
    WorkbenchError,
)
from workbench.generation import greedy_generate
from workbench.heads import head_id
from workbench.model_parts import input_device
from workbench.models import (
    DeviceMap,
    ModelInfo,
    check_finite_logits,
    check_load_arguments,
    load_hf,
    resolve_source,
)
from workbench.models import describe as describe_model


@contextmanager
def kernel_errors_translated(what: str) -> Iterator[None]:
    """Turn a :class:`kernels.KernelInputError` escaping a forward into a :class:`ProbeError`
    (the boundary translation of issue 13: no lower-layer error reaches the user)."""
    try:
        yield
    except KernelInputError as exc:
        raise ProbeError(f"{what}: the attention kernels refused the request: {exc}") from exc


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
        """``L{layer}H{head}`` after checking both are integers (no coercion) in range."""
        n_layers, n_heads = self.layout.n_layers, self.layout.n_heads
        layer = integer("layer", layer, error=LayerOutOfRangeError)
        head = integer("head", head, error=HeadOutOfRangeError)
        if not 0 <= layer < n_layers:
            raise LayerOutOfRangeError(
                f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}"
            )
        if not 0 <= head < n_heads:
            raise HeadOutOfRangeError(
                f"head {head} is out of range: this model has query heads 0..{n_heads - 1} "
                "per layer"
            )
        return head_id(layer, head)

    # -- prompts ---------------------------------------------------------------------------
    def encode(
        self, prompt: str | Encoded, *, chat: bool = False, system: str | None = None
    ) -> Encoded:
        """Tokenize ``prompt`` with the tokenizer's defaults (chat template only if ``chat``).

        Raises :class:`~probes.checks.ArgumentError` for a prompt that is not a string (None,
        bytes, a number), :class:`EmptyPromptError` for an empty or blank one and
        :class:`PromptTooLongError` when it has more tokens than the model's context.
        """
        chat = boolean("chat", chat)
        if isinstance(prompt, Encoded):
            self._check_length(prompt.n_tokens)
            return prompt
        if not isinstance(prompt, str):
            raise ArgumentError(f"prompt must be a string, got {describe(prompt)}")
        encodable("prompt", prompt)
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty; give some text to run the model on")
        system = optional(text, "system", system, allow_empty=True)
        text_ = self._chat_text(prompt, system) if chat else prompt
        enc = self.tokenizer(text_, return_tensors="pt", add_special_tokens=not chat)
        ids = enc["input_ids"]
        n = int(ids.shape[1])
        if n == 0:
            raise EmptyPromptError("the prompt tokenized to zero tokens")
        self._check_length(n)
        tokens = [self.tokenizer.decode([int(t)]) for t in ids[0]]
        return Encoded(ids, enc["attention_mask"], tokens, text_, chat)

    def _chat_text(self, prompt: str, system: str | None) -> str:
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise WorkbenchError(
                f"chat=True needs the tokenizer's chat template, and {self.info.name}'s "
                f"could not format this prompt ({exc}); pass chat=False"
            ) from exc

    def _check_length(self, n_tokens: int) -> None:
        if n_tokens > self.info.max_context:
            raise PromptTooLongError(
                f"the prompt has {n_tokens} tokens, more than {self.info.name}'s context of "
                f"{self.info.max_context} tokens; shorten it"
            )

    # -- forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self, prompt: str | Encoded, *, chat: bool = False, last_only: bool = False
    ) -> Tensor:
        """Logits (1, L, V) of one forward pass through the workbench attention path; with
        ``last_only``, (1, 1, V) of the last position only (a probe run that needs no logits
        then skips the unembedding of every other position: 1.6 GB of float32 at 8k tokens
        for a 49k vocabulary)."""
        enc = self.encode(prompt, chat=chat)
        with kernel_errors_translated("forward"):
            out = self.model(
                input_ids=enc.input_ids.to(self.device),
                attention_mask=enc.attention_mask.to(self.device),
                use_cache=False,
                logits_to_keep=1 if last_only else 0,
            )
        return out.logits

    def generate(
        self, prompt: str | Encoded, *, max_new_tokens: int = 20, chat: bool = False
    ) -> str:
        """Greedy continuation of ``prompt`` (KV cache on), decoded without special tokens
        (:func:`workbench.generation.greedy_generate`).

        Probes and interventions active around the call act on every decode step.
        ``max_new_tokens`` is an integer >= 1 and the prompt plus the new tokens must fit in
        the model's context (:class:`PromptTooLongError` otherwise, before anything runs).
        """
        max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=1)
        enc = self.encode(prompt, chat=chat)
        with kernel_errors_translated("generate"):
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
        """A :class:`probes.Capture` context manager on this model; see :class:`CaptureSpec`.

        Every argument is checked here (integers in range, a ``(start, end)`` query window,
        booleans, an available device); entering it checks the memory the kept tensors need
        at the first attention call, before anything is kept.
        """
        probes.require_workbench_attention(self.model)
        spec = CaptureSpec(
            layers=None if layers is None else self.layout.check_layers(layers),
            heads=None if heads is None else self.layout.check_heads(heads),
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
        ``layers`` from the kernels (no L x L maps); see :class:`probes.StatisticsSpec`.

        Spans are ``(start, end)`` integer pairs, ``pooled_block`` an integer >= 1 or None."""
        probes.require_workbench_attention(self.model)
        spec = StatisticsSpec(
            layers=None if layers is None else self.layout.check_layers(layers),
            received=received,
            entropy=entropy,
            argmax=argmax,
            spans=spans,
            distance=distance,
            pooled_block=pooled_block,
            lse=lse,
            device=device,
        )
        return Statistics(self.layout, spec)

    def run_statistics(
        self,
        prompt: str | Encoded | Sequence[str | Encoded],
        *,
        chat: bool = False,
        batch_size: int | str = "auto",
        **statistics_kwargs,
    ) -> tuple[Encoded, probes.ProbeRecords] | list[tuple[Encoded, probes.ProbeRecords]]:
        """Encode, run a forward with a :meth:`statistics` probe, return the records.

        One prompt -> ``(encoded, records)``. A list of prompts -> a list of those pairs, in
        order, from right-padded batches of ``batch_size`` prompts (``"auto"``: sized from
        free memory; :mod:`workbench.batching`), each pair equal to a one-prompt run.
        Everything is checked before the first forward: the arguments, every prompt, and
        spans against every prompt's length."""
        _known_keywords("run_statistics", statistics_kwargs, self.statistics)
        check_batch_size(batch_size)
        if isinstance(prompt, (str, Encoded)):
            stats = self.statistics(**statistics_kwargs)
            enc = self.encode(prompt, chat=chat)
            stats.check_prompt(enc.n_tokens)
            with stats:
                self.forward(enc, last_only=True)
            return enc, stats.records
        return statistics_over(self, prompt, chat=chat, batch_size=batch_size, **statistics_kwargs)

    def run_capture(
        self,
        prompt: str | Encoded | Sequence[str | Encoded],
        *,
        chat: bool = False,
        batch_size: int | str = "auto",
        **capture_kwargs,
    ) -> tuple[Encoded, probes.ProbeRecords] | list[tuple[Encoded, probes.ProbeRecords]]:
        """Encode, check the capture (its query window against the prompt, its memory), run
        a forward, return the records; a list of prompts runs in right-padded batches as in
        :meth:`run_statistics` (memory checked for each whole batch)."""
        _known_keywords("run_capture", capture_kwargs, self.capture)
        check_batch_size(batch_size)
        if isinstance(prompt, (str, Encoded)):
            cap = self.capture(**capture_kwargs)
            enc = self.encode(prompt, chat=chat)
            cap.check_prompt(enc.n_tokens)
            cap.check_fits(enc.n_tokens)
            with cap:
                self.forward(enc, last_only=True)
            return enc, cap.records
        return captures_over(self, prompt, chat=chat, batch_size=batch_size, **capture_kwargs)


def _known_keywords(where: str, given: dict[str, Any], method: Any) -> None:
    """Refuse keywords ``method`` does not take (instead of Python's ``TypeError``)."""
    unknown_keywords(where, given, inspect.signature(method).parameters)


def wrap_model(model: nn.Module, tokenizer, name: str | None = None) -> LoadedModel:
    """Drive an already-loaded Hugging Face causal LM through the workbench attention path.

    Refuses a model whose logits are not finite on a short probe prompt
    (:class:`~workbench.errors.CorruptWeightsError`)."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ArgumentError(
            f"model must be a Hugging Face causal LM (an nn.Module with a config), "
            f"got {describe(model)}"
        )
    name = optional(text, "name", name)
    start = time.perf_counter()
    model.set_attn_implementation(probes.register())
    model.eval()
    name = name or getattr(model.config, "name_or_path", None) or model.config.model_type
    info = describe_model(model, str(name), str(getattr(model.config, "name_or_path", "")))
    lm = LoadedModel(model, tokenizer, info)
    check_finite_logits(model, info.name)
    lm.load_seconds = time.perf_counter() - start
    return lm


def load_model(
    name: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: DeviceMap | None = None,
) -> LoadedModel:
    """Load a model for the workbench.

    Args:
        name: None (or ``"smollm2"``) for the embedded SmolLM2-135M-Instruct; otherwise a local
            folder (``str`` or ``pathlib.Path``) or a Hugging Face id already in the local cache
            (never downloaded).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        device: e.g. ``"cuda"``; None = ``"cpu"`` unless ``device_map`` places the model.
        device_map: for models that do not fit one device: ``"auto"`` or a dict from module
            names to devices, passed to ``from_pretrained`` (accelerate); ``device`` is then
            not applied, and giving one that disagrees with the map is an error. Inputs go to
            the input embedding's device (:attr:`LoadedModel.device`).

    Raises:
        ModelNotFoundError: the model is not available locally (the message says how to get it).
        ModelFilesError: its folder lacks tokenizer files or holds an unreadable config or
            weights file; CorruptWeightsError: it loads but its logits are not finite on a
            short probe prompt.
        UnsupportedArchitectureError: its ``model_type`` is not in the architecture table
            (checked from config.json before any weight is read).
        WorkbenchError: a bad ``name``/``dtype``/``device`` (``"meta"``, ``"cuda"`` without
            CUDA), or ``device`` and ``device_map`` disagree.
    """
    name, dtype_, device = check_load_arguments(name, dtype, device, device_map)
    display, source = resolve_source(name)  # may build the embedded cache once (slow)
    start = time.perf_counter()
    model, tokenizer = load_hf(source, dtype_, device, device_map)
    info = describe_model(model, display, source)
    lm = LoadedModel(model, tokenizer, info)
    check_finite_logits(model, display)
    lm.load_seconds = time.perf_counter() - start
    return lm
