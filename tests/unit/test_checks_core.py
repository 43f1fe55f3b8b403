"""Issue 13 at the core API boundary: every bad input to the probes, ``LoadedModel`` and
``load_model`` is refused before any forward runs, with a ``WorkbenchError`` subclass whose
message names the argument and the bad value; no hook is left behind; a good call still works
after a refused one; lower-layer errors (kernels, safetensors, tokenizers) are translated.

Tests marked ``model`` use the session's embedded model; the others use tiny random models
saved to temporary folders (nothing downloaded).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import probes
import workbench
from kernels.errors import KernelInputError
from probes import checks
from tests.conftest import SHORT_PROMPT, no_hooks_left
from tests.tiny_models import tiny_model
from workbench import maps, model_parts
from workbench.errors import CorruptWeightsError, ModelFilesError, RecordNotFoundError
from workbench.generation import encode_batch, generate_batch

model = pytest.mark.model
ArgumentError = checks.ArgumentError
PROMPT = "The quick brown fox jumps over the lazy dog."  # 10 tokens with SmolLM2's tokenizer


def refused(error: type[Exception], call: Callable[[], object], *fragments: str) -> str:
    """Run ``call``, expect ``error`` (always a WorkbenchError), check the message names every
    fragment; return the message."""
    assert issubclass(error, workbench.WorkbenchError)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture(scope="module")
def reference_logits(lm):
    """Logits of PROMPT before any refused call: every good call afterwards must match."""
    return lm.forward(PROMPT)


def still_good(lm, reference_logits) -> None:
    """A refused call changed nothing: no hooks, same logits, probes still work."""
    assert no_hooks_left(lm)
    assert torch.equal(lm.forward(PROMPT), reference_logits)
    _, records = lm.run_capture(PROMPT, layers=[1], heads=[2], query_window=(3, 5))
    assert records.map(1, 2).shape == (2, lm.encode(PROMPT).n_tokens)


# -- head ids ----------------------------------------------------------------------------------
NOT_INDICES = [3.5, 3.0, True, False, "3", "L3", None, math.nan, np.float64(3.0), b"3", [3]]


@pytest.mark.parametrize("bad", NOT_INDICES, ids=repr)
def test_head_id_and_head_refuse_non_integers(bad):
    shown = repr(bad)[:20]
    refused(workbench.LayerOutOfRangeError, lambda: workbench.head_id(bad, 2), "layer", shown)
    refused(workbench.HeadOutOfRangeError, lambda: workbench.head_id(2, bad), "head", shown)
    refused(workbench.LayerOutOfRangeError, lambda: workbench.Head(bad, 3), "layer", shown)
    refused(workbench.HeadOutOfRangeError, lambda: workbench.Head(3, bad), "head", shown)


def test_head_ids_take_numpy_integers_and_refuse_negatives():
    assert workbench.head_id(np.int64(5), np.int32(3)) == "L5H3"
    head = workbench.Head(np.int64(1), 2)
    assert head == (1, 2) and type(head.layer) is int and head.id == "L1H2"
    refused(workbench.HeadOutOfRangeError, lambda: workbench.Head(1, -2), "head", "-2")


@pytest.mark.parametrize("bad", [3, None, b"L1H1", ("L1H1",)], ids=repr)
def test_parse_head_refuses_non_strings(bad):
    refused(ArgumentError, lambda: workbench.parse_head(bad), "head id", repr(bad))


def test_parse_heads_errors_name_the_problem():
    refused(ArgumentError, lambda: workbench.parse_heads(7), "heads", "7 (int)")
    refused(workbench.WorkbenchError, lambda: workbench.parse_heads("L5H*"), "head count")
    refused(ArgumentError, lambda: workbench.parse_heads("L5H*", n_heads=2.0), "n_heads", "2.0")
    assert workbench.parse_heads("L5H*", n_heads=2) == [(5, 0), (5, 1)]


# -- shared validators added for this boundary ------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [(5, 2), (3, 3), (-1, 2), (1.0, 2), (True, 2), (1, 2, 3), (1,), "12", {1, 2}, 3, None],
    ids=repr,
)
def test_span_refuses_everything_but_an_increasing_integer_pair(bad):
    refused(ArgumentError, lambda: checks.span("window", bad), "window", "0 <= start < end")


def test_span_accepts_sequences_arrays_and_caps_the_end():
    assert checks.span("w", [np.int64(1), 4]) == (1, 4)
    assert checks.span("w", torch.tensor([0, 2])) == (0, 2)
    refused(ArgumentError, lambda: checks.span("w", (0, 9), maximum=8), "<= 8", "(0, 9)")


@pytest.mark.parametrize("bad", ["nonsense", "cuda:x", "", 3, None, "meta", torch.device("meta")])
def test_device_refuses_what_cannot_hold_values(bad):
    refused(ArgumentError, lambda: checks.device("device", bad), "device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_device_refuses_cuda_without_cuda():
    refused(ArgumentError, lambda: checks.device("device", "cuda"), "device='cuda'", "no cuda")
    assert checks.device("device", "cuda", check_available=False) == torch.device("cuda")


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (lambda: maps.pooled_to_mass(np.ones((3, 3)), 10, 0), ("block", "0")),
        (lambda: maps.pooled_to_mass(np.ones((3, 3)), 10, 2.0), ("block", "2.0")),
        (lambda: maps.pooled_to_mass(np.ones((3, 3)), 10, 2), ("5 blocks", "(3, 3)")),
        (lambda: maps.regroup_mass(np.ones((5, 5)), 10, 2, 1.5), ("factor", "1.5")),
        (lambda: maps.regroup_mass(np.ones((5, 5)), "10", 2, 2), ("n_tokens", "'10'")),
        (lambda: maps.block_max(np.ones(9), 2, 4), ("9 values", "n_blocks=4")),
        (lambda: maps.block_visibility(3, True, 10), ("block", "True")),
        (lambda: maps.sink_mask(np.ones(3), offset=-1), ("offset", "-1")),
    ],
)
def test_map_math_refuses_inconsistent_geometry(call, fragments):
    refused(ArgumentError, call, *fragments)


# -- layers, heads and probe options through LoadedModel -------------------------------------
BAD_LAYERS = [
    ("12", "'12'"),  # never layers 1 and 2
    (3.0, "3.0"),
    ([2.7], "2.7"),
    (True, "True"),
    ([True], "True"),
    (np.float32(1.0), "1.0"),
    (math.nan, "nan"),
    ([30], "30"),
    ([-1], "-1"),
    ([], "no layers"),
    (b"1", "b'1'"),
]


@model
@pytest.mark.parametrize(("bad", "shown"), BAD_LAYERS, ids=[repr(b) for b, _ in BAD_LAYERS])
def test_bad_layers_are_refused_everywhere(lm, reference_logits, bad, shown):
    error = workbench.LayerOutOfRangeError
    refused(error, lambda: lm.capture(layers=bad), "layer", shown)
    refused(error, lambda: lm.statistics(layers=bad), "layer", shown)
    refused(error, lambda: lm.run_capture(PROMPT, layers=bad), "layer", shown)
    refused(error, lambda: lm.run_statistics(PROMPT, layers=bad), "layer", shown)
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize("bad", ["5", [2.7], [True], 9, [-1], np.float64(2.0)], ids=repr)
def test_bad_heads_are_refused(lm, reference_logits, bad):
    refused(workbench.HeadOutOfRangeError, lambda: lm.capture(heads=bad), "head")
    refused(workbench.HeadOutOfRangeError, lambda: lm.run_capture(PROMPT, heads=bad), "head")
    still_good(lm, reference_logits)


@model
def test_layers_take_numpy_integers(lm):
    assert lm.capture(layers=np.int64(3), heads=np.arange(2)).layers == (3,)
    assert lm.head_id(np.int64(29), np.int64(8)) == "L29H8"


@model
@pytest.mark.parametrize(
    ("layer", "head", "error", "fragments"),
    [
        (3.5, 2, workbench.LayerOutOfRangeError, ("layer", "3.5")),
        (30, 2, workbench.LayerOutOfRangeError, ("layer", "0..29", "30")),
        (True, 2, workbench.LayerOutOfRangeError, ("layer", "True")),
        (3, 9, workbench.HeadOutOfRangeError, ("head", "0..8", "9")),
        (3, "2", workbench.HeadOutOfRangeError, ("head", "'2'")),
    ],
)
def test_lm_head_id_checks_types_and_ranges(lm, layer, head, error, fragments):
    refused(error, lambda: lm.head_id(layer, head), *fragments)


BAD_WINDOWS = [(5, 2), (3, 3), (-1, 2), (1.5, 3), (1, 2, 3), "ab", 4, (True, 3), {1, 2}]


@model
@pytest.mark.parametrize("bad", BAD_WINDOWS, ids=repr)
def test_bad_query_windows_are_refused_before_the_forward(lm, reference_logits, bad):
    refused(probes.ProbeError, lambda: lm.capture(query_window=bad), "query_window")
    refused(probes.ProbeError, lambda: lm.run_capture(PROMPT, query_window=bad), "query_window")
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize("window", [(50, 60), (2, 60), (10, 11)])
def test_query_windows_past_the_prompt_are_refused(lm, reference_logits, window):
    n = lm.encode(PROMPT).n_tokens
    assert n == 10
    fragments = ("query_window", str(window), f"{n}")
    refused(probes.ProbeError, lambda: lm.run_capture(PROMPT, query_window=window), *fragments)

    def by_hand():
        with lm.capture(layers=[2], query_window=window):
            lm.forward(PROMPT)

    message = refused(probes.ProbeError, by_hand, *fragments)
    assert "kernels" not in message  # refused by the probe, not by a kernel check
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize(
    ("kwargs", "error", "fragments"),
    [
        ({"pooled_block": -1}, ArgumentError, ("pooled_block", "-1")),
        ({"pooled_block": 0}, ArgumentError, ("pooled_block", "0")),
        ({"pooled_block": 2.5}, ArgumentError, ("pooled_block", "2.5")),
        ({"pooled_block": True}, ArgumentError, ("pooled_block", "True")),
        ({"pooled_block": "4"}, ArgumentError, ("pooled_block", "'4'")),
        ({"spans": [(5, 2)]}, probes.ProbeError, ("spans[0]", "(5, 2)")),
        ({"spans": [(0, 3), (-1, 2)]}, probes.ProbeError, ("spans[1]", "(-1, 2)")),
        ({"spans": [(0.0, 2)]}, probes.ProbeError, ("spans[0]", "0.0")),
        ({"spans": [3]}, probes.ProbeError, ("spans[0]", "3 (int)")),
        ({"spans": "0,3"}, probes.ProbeError, ("spans", "'0,3'")),
        ({"spans": (0, 3)}, probes.ProbeError, ("spans[0]", "0 (int)")),
        ({"entropy": "no"}, ArgumentError, ("entropy", "'no'")),
        ({"lse": 1}, ArgumentError, ("lse", "1 (int)")),
        ({"device": "meta"}, ArgumentError, ("device", "meta")),
        ({"device": "gpu0"}, ArgumentError, ("device", "'gpu0'")),
    ],
)
def test_bad_statistics_options_are_refused(lm, reference_logits, kwargs, error, fragments):
    refused(error, lambda: lm.statistics(**kwargs), *fragments)
    refused(error, lambda: lm.run_statistics(PROMPT, **kwargs), *fragments)
    refused(error, lambda: probes.StatisticsSpec(**kwargs), *fragments)
    still_good(lm, reference_logits)


@model
def test_pooled_block_zero_is_not_silently_dropped_and_one_works(lm):
    _, records = lm.run_statistics(PROMPT, layers=[0], pooled_block=1)
    n = lm.encode(PROMPT).n_tokens
    assert records[0].stats["pooled"].shape == (1, lm.info.n_heads, n, n)


@model
@pytest.mark.parametrize("span", [(0, 11), (10, 20), (100, 200)])
def test_spans_past_the_prompt_are_refused(lm, reference_logits, span):
    n = lm.encode(PROMPT).n_tokens
    fragments = ("spans[0]", str(span), str(n))
    refused(probes.ProbeError, lambda: lm.run_statistics(PROMPT, spans=[span]), *fragments)

    def by_hand():
        with lm.statistics(layers=[1], spans=[span]):
            lm.forward(PROMPT)

    refused(probes.ProbeError, by_hand, *fragments)
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"maps": "no"}, ("maps", "'no'")),
        ({"qkv": 1}, ("qkv", "1 (int)")),
        ({"z": None}, ("z", "None")),
        ({"device": "nonsense"}, ("device", "'nonsense'")),
        ({"device": "meta"}, ("device", "meta")),
        ({"device": 0}, ("device", "0 (int)")),
        ({"max_bytes": -1}, ("max_bytes", "-1")),
        ({"max_bytes": 1e9}, ("max_bytes", "1000000000.0")),
    ],
)
def test_bad_capture_options_are_refused(lm, reference_logits, kwargs, fragments):
    refused(ArgumentError, lambda: lm.capture(**kwargs), *fragments)
    refused(ArgumentError, lambda: lm.run_capture(PROMPT, **kwargs), *fragments)
    refused(ArgumentError, lambda: probes.CaptureSpec(**kwargs), *fragments)
    still_good(lm, reference_logits)


@model
def test_unknown_keywords_are_refused_with_a_suggestion(lm):
    refused(ArgumentError, lambda: lm.run_capture(PROMPT, layer=[0]), "'layer'", "'layers'")
    refused(ArgumentError, lambda: lm.run_statistics(PROMPT, pooled=4), "'pooled'")


@model
def test_record_lookups_are_workbench_errors_and_key_errors(lm):
    _, records = lm.run_capture(PROMPT, layers=[1], heads=[2])
    lookups = [
        (lambda: records[5], ("layer 5", "(1,)")),
        (lambda: records["1"], ("layer", "'1'")),
        (lambda: records[1, 3], ("step 3",)),
        (lambda: records[1, 0.5], ("step", "0.5")),
        (lambda: records.map(1, 4), ("head 4", "(2,)")),
        (lambda: records.map(1, 2.0), ("head", "2.0")),
        (lambda: records.map(1, 2, batch=1), ("batch", "1")),
    ]
    for lookup, fragments in lookups:
        message = refused(RecordNotFoundError, lookup, *fragments)
        with pytest.raises(KeyError):  # still a KeyError for mapping-style callers
            lookup()
        assert not message.startswith("'"), message  # not KeyError's quoted repr
    assert records.map(np.int64(1), np.int64(2)).shape == (10, 10)


# -- kernel errors, re-entry, memory -----------------------------------------------------------
@model
def test_kernel_input_errors_are_translated(lm, reference_logits):
    class AskForAMissingHead(probes.AttentionHook):
        def prepare(self, call):
            call.request_maps([99], None)  # the kernels refuse: there are 9 heads

    hook = probes.attached(AskForAMissingHead(), [lm.layout.attention_modules[4]])
    with hook, pytest.raises(probes.ProbeError, match="layer 4") as info:
        lm.forward(PROMPT)
    assert isinstance(info.value.__cause__, KernelInputError)
    still_good(lm, reference_logits)


@model
def test_two_statistics_probes_with_different_pooled_blocks_are_refused_on_entry(lm):
    first, second = lm.statistics(layers=[0, 1], pooled_block=4), lm.statistics(pooled_block=8)
    with first:
        refused(probes.ProbeError, second.__enter__, "pooled_block=8", "pooled_block=4")
        lm.forward(PROMPT)
    assert first.records[1].stats["pooled"].shape[-1] == 3  # ceil(10 / 4)
    assert no_hooks_left(lm)


@model
def test_reentering_a_probe_is_a_clear_error_and_the_outer_one_keeps_working(lm):
    cap = lm.capture(layers=[2], heads=[0])
    with cap:
        refused(probes.ProbeError, cap.__enter__, "already active")
        lm.forward(PROMPT)
    assert cap.records.map(2, 0).shape[0] == lm.encode(PROMPT).n_tokens
    assert no_hooks_left(lm)
    stats = lm.statistics(layers=[0])
    with stats:
        refused(probes.ProbeError, stats.__enter__, "already active")
        lm.forward(PROMPT)
    assert stats.records[0, 0].stats["entropy"].shape == (1, lm.info.n_heads, 10)
    assert no_hooks_left(lm)


@model
def test_capture_context_refuses_memory_before_keeping_anything(lm):
    """``with lm.capture():`` refuses at the first captured layer, with run_capture's message,
    instead of keeping maps until the budget runs out."""
    n = lm.encode(SHORT_PROMPT).n_tokens
    per_layer = 4 * lm.info.n_heads * n * n
    budget = 3 * per_layer  # three layers of maps fit, thirty do not
    with pytest.raises(workbench.CaptureTooLargeError) as up_front:
        lm.run_capture(SHORT_PROMPT, max_bytes=budget)
    cap = lm.capture(max_bytes=budget)
    with pytest.raises(workbench.CaptureTooLargeError) as by_hand, cap:
        lm.forward(SHORT_PROMPT)
    assert str(by_hand.value) == str(up_front.value)
    assert f"{30 * per_layer / 1e3:.1f} KB" in str(by_hand.value)
    assert cap.records.layers_fired == ()  # nothing was kept
    assert no_hooks_left(lm)


# -- prompts -----------------------------------------------------------------------------------
def _entry_points(lm):
    return {
        "encode": lambda p: lm.encode(p),
        "forward": lambda p: lm.forward(p),
        "run_capture": lambda p: lm.run_capture(p, layers=[0]),
        "run_statistics": lambda p: lm.run_statistics(p, layers=[0]),
        "generate": lambda p: lm.generate(p, max_new_tokens=1),
    }


#: Entry points that also take a list of prompts (run in right-padded batches).
TAKE_LISTS = {"run_capture", "run_statistics"}


@model
@pytest.mark.parametrize("bad", [None, 3, 2.5, b"hello", ["hello"], ("a",)], ids=repr)
def test_prompts_that_are_not_strings_are_named_as_such(lm, reference_logits, bad):
    for name, call in _entry_points(lm).items():
        if name in TAKE_LISTS and isinstance(bad, (list, tuple)):
            continue  # a list of prompts: accepted (tests/integration/test_batching.py)
        message = refused(ArgumentError, partial(call, bad), "prompt must be a string", repr(bad))
        assert "empty" not in message, name
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        ([None], ("prompt 0: prompt must be a string", "None")),
        (["ok", 3], ("prompt 1: prompt must be a string", "3 (int)")),
        ([b"x"], ("prompt 0: prompt must be a string", "bytes")),
        ([["nested"]], ("prompt 0: prompt must be a string", "['nested']")),
        ([], ("the list of prompts is empty",)),
        ({"a": 1}, ("a list of them", "dict")),
    ],
    ids=repr,
)
def test_batched_entry_points_name_the_bad_prompt_of_a_list(lm, reference_logits, bad, needles):
    for name in sorted(TAKE_LISTS):
        refused(ArgumentError, partial(_entry_points(lm)[name], bad), *needles)
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize("blank", ["", "   ", "\n\t"], ids=repr)
def test_blank_prompts_are_empty_prompt_errors(lm, blank):
    for call in _entry_points(lm).values():
        refused(workbench.EmptyPromptError, partial(call, blank), "empty")


@model
def test_prompts_longer_than_the_context_are_refused_everywhere(lm, reference_logits):
    long = "word " * 9000
    for call in _entry_points(lm).values():
        refused(workbench.PromptTooLongError, partial(call, long), "8192")
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [({"chat": "no"}, ("chat", "'no'")), ({"chat": True, "system": 3}, ("system", "3 (int)"))],
)
def test_encode_options_are_checked(lm, kwargs, fragments):
    refused(ArgumentError, lambda: lm.encode(PROMPT, **kwargs), *fragments)


# -- generation --------------------------------------------------------------------------------
@model
@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True, None, np.float64(2.0)], ids=repr)
def test_max_new_tokens_must_be_a_positive_integer(lm, bad):
    refused(ArgumentError, lambda: lm.generate(PROMPT, max_new_tokens=bad), "max_new_tokens")
    refused(
        ArgumentError, lambda: generate_batch(lm, [PROMPT], max_new_tokens=bad), "max_new_tokens"
    )


@model
def test_generation_past_the_context_is_refused_naming_both_numbers(lm, reference_logits):
    n = lm.encode(PROMPT).n_tokens
    for too_many in (10**9, 8192 - n + 1):
        message = refused(
            workbench.PromptTooLongError,
            partial(lm.generate, PROMPT, max_new_tokens=too_many),
            f"max_new_tokens={too_many}",
            f"{n} tokens",
            "8192",
            f"at most {8192 - n}",
        )
        assert "prompt" in message
    refused(
        workbench.PromptTooLongError,
        lambda: generate_batch(lm, [PROMPT, "Hi"], max_new_tokens=10**9, chat=False),
        "max_new_tokens=1000000000",
    )
    assert isinstance(lm.generate(PROMPT, max_new_tokens=2), str)
    still_good(lm, reference_logits)


@model
@pytest.mark.parametrize("bad", ["one prompt", [], None, 3], ids=repr)
def test_prompt_lists_must_be_lists(lm, bad):
    refused(workbench.WorkbenchError, lambda: encode_batch(lm, bad), "prompts")
    refused(workbench.WorkbenchError, lambda: generate_batch(lm, bad), "prompts")


# -- loading -----------------------------------------------------------------------------------
def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "cat", "sat", "on", "a", "mat"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama saved with a word-level tokenizer (what save_pretrained writes)."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    return folder


def _variant(tiny_folder: Path, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    change(folder)
    return folder


def test_load_model_takes_a_path_and_a_string(tiny_folder):
    by_path = workbench.load_model(tiny_folder)
    by_text = workbench.load_model(str(tiny_folder))
    assert by_path.info.architecture == "llama" == by_text.info.architecture
    assert torch.equal(by_path.forward("the cat sat"), by_text.forward("the cat sat"))
    # this tokenizer has no chat template: chat=True is one clear error, not a ValueError
    refused(workbench.WorkbenchError, lambda: by_path.encode("the cat", chat=True), "chat=False")


@pytest.mark.parametrize("bad", [3, b"folder", ["smollm2"], 2.5], ids=repr)
def test_load_model_refuses_names_that_are_not_text_or_paths(bad):
    refused(ArgumentError, lambda: workbench.load_model(bad), "name", repr(bad))


def test_load_model_missing_paths_are_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    refused(workbench.ModelNotFoundError, lambda: workbench.load_model(missing), str(missing))


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def _corrupt(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 50)


def _truncated(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_json(folder: Path) -> None:
    (folder / "config.json").write_text("{model_type: llama")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (_no_tokenizer, ("tokenizer", "tokenizer.json")),
        (_corrupt, ("weights", "corrupt safetensors")),
        (_truncated, ("weights", "truncated")),
        (_bad_json, ("config.json", "JSON")),
    ],
    ids=["no-tokenizer", "corrupt", "truncated", "bad-json"],
)
def test_broken_model_folders_are_model_files_errors(tiny_folder, tmp_path, change, fragments):
    folder = _variant(tiny_folder, tmp_path, change)
    with pytest.raises(ModelFilesError) as info:
        workbench.load_model(folder)
    for fragment in (str(folder), *fragments):
        assert fragment in str(info.value), (fragment, str(info.value))
    assert info.value.__cause__ is not None  # translated `from exc`, the original kept


def test_corrupt_safetensors_keeps_the_safetensors_error_as_cause(tiny_folder, tmp_path):
    from safetensors import SafetensorError

    folder = _variant(tiny_folder, tmp_path, _corrupt)
    with pytest.raises(ModelFilesError) as info:
        workbench.load_model(folder)
    assert isinstance(info.value.__cause__, SafetensorError)


def _model_type(name: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = name
        (folder / "config.json").write_text(json.dumps(config))
        _corrupt(folder)  # the type is refused before any weight is read

    return change


@pytest.mark.parametrize("model_type", ["frobnicator", "opt"])
def test_unknown_model_types_are_refused_from_the_config(tiny_folder, tmp_path, model_type):
    folder = _variant(tiny_folder, tmp_path, _model_type(model_type))
    refused(
        workbench.UnsupportedArchitectureError,
        lambda: workbench.load_model(folder),
        repr(model_type),
        "supported: ",
        "llama",
        "qwen2",
    )


@pytest.mark.parametrize(
    ("device", "fragments"),
    [
        ("meta", ("device='meta'", "no values")),
        ("nonsense", ("device", "'nonsense'")),
        ("cuda:x", ("device", "'cuda:x'")),
        (7, ("device", "7 (int)")),
    ],
)
def test_load_model_refuses_devices_up_front(tiny_folder, device, fragments):
    refused(ArgumentError, lambda: workbench.load_model(tiny_folder, device=device), *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_load_model_refuses_cuda_without_cuda(tiny_folder):
    refused(
        ArgumentError,
        lambda: workbench.load_model(tiny_folder, device="cuda"),
        "device='cuda'",
        "no cuda device",
    )
    # a contradiction with the device map is still reported as such
    refused(
        workbench.WorkbenchError,
        lambda: workbench.load_model(tiny_folder, device="cuda", device_map="auto"),
        "disagree",
    )


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"dtype": 3}, ("dtype", "3 (int)")),
        ({"dtype": "float8"}, ("dtype", "'float8'")),
        ({"dtype": torch.int64}, ("dtype", "torch.int64")),
        ({"device_map": 3.5}, ("device_map", "3.5")),
        ({"device_map": "nonsense"}, ("device_map", "'nonsense'")),
        ({"device_map": {"": "gpu"}}, ("device_map['']", "'gpu'")),
        ({"device_map": {"": "meta"}}, ("device_map['']", "meta")),
    ],
)
def test_load_model_refuses_bad_dtypes_and_maps(tiny_folder, kwargs, fragments):
    refused(ArgumentError, lambda: workbench.load_model(tiny_folder, **kwargs), *fragments)


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_weights_giving_non_finite_logits_are_refused(tiny_folder, tmp_path, poison):
    broken = tiny_model("llama")
    with torch.no_grad():
        for param in broken.parameters():
            param.fill_(poison)
    folder = _variant(tiny_folder, tmp_path, lambda f: broken.save_pretrained(f))
    phrase = "weights look corrupt: logits are not finite on a probe prompt"
    refused(CorruptWeightsError, lambda: workbench.load_model(folder), phrase)
    refused(CorruptWeightsError, lambda: workbench.wrap_model(broken, None), phrase)
    assert workbench.load_model(tiny_folder).info.architecture == "llama"  # the intact one loads


@pytest.mark.parametrize("bad", [[1.0], "1", [True], [4], 2.5], ids=repr)
def test_borrowed_weights_refuse_bad_layers(bad):
    model, donor = tiny_model("llama"), tiny_model("llama", seed=1)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with (
        pytest.raises(workbench.LayerOutOfRangeError, match="layer"),
        model_parts.borrowed_weights(model, donor, "mlp", layers=bad),
    ):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
