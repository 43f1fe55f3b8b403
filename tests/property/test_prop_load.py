"""``workbench.load_model`` under generated arguments, cheap cases only: bad names, dtypes,
devices and device maps end in a WorkbenchError before any weights are read (``no_model_load``
fails the test if loading would start: the embedded model is never built here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench
from tests.property import strategies as gen
from tests.property.support import cases, count_case, device_is_usable, refused
from workbench.model_files import EMBEDDED_ALIASES

pytestmark = pytest.mark.timeout(300)

#: The dtypes load_model documents (any case), and the floating torch dtypes.
DTYPE_NAMES = {"float32", "fp32", "float16", "fp16", "bfloat16", "bf16"}
#: accelerate's placement strategies.
STRATEGIES = {"auto", "balanced", "balanced_low_0", "sequential"}


def name_is_bad(value) -> bool:
    """Not None (the embedded model), not an alias of it: a str or PathLike that names no model
    here (the test runs in an empty folder), or not a name at all."""
    if value is None:
        return False
    if isinstance(value, str):
        return value.lower() not in EMBEDDED_ALIASES
    return True


def dtype_is_bad(value) -> bool:
    if isinstance(value, torch.dtype):
        return not value.is_floating_point
    return not (isinstance(value, str) and value.lower() in DTYPE_NAMES)


def map_is_bad(value) -> bool:
    """A device map that is neither a strategy, nor a usable device, nor a dict of them."""
    if isinstance(value, str):
        return value not in STRATEGIES and device_is_usable(value) is False
    if isinstance(value, dict):
        return any(_map_value_is_bad(v) for v in value.values())
    return value is not None


def _map_value_is_bad(value) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return device_is_usable(f"cuda:{value}") is False if value >= 0 else True
    return value != "disk" and device_is_usable(value) is False


names = st.one_of(
    gen.texts,
    st.integers(256, 5000).map(lambda n: "x" * n),  # longer than a file name may be
    gen.texts.map(Path),
    gen.texts.map(lambda t: f"no-such-org/{t}"),
    gen.anything(),
).filter(name_is_bad)
dtypes = st.one_of(
    gen.texts,
    st.sampled_from([torch.int64, torch.int8, torch.bool, torch.complex64, torch.uint8]),
    gen.anything(),
).filter(dtype_is_bad)
devices = st.one_of(
    gen.texts,
    st.sampled_from(["meta", "cuda:99", "cpu:x", "gpu", "cuda:-1", "mps:0x"]),
    gen.anything(),
).filter(lambda v: v is not None and device_is_usable(v) is False)
device_maps = st.one_of(
    gen.texts,
    st.dictionaries(gen.texts, st.one_of(gen.texts, st.integers(-3, 99), gen.anything())),
    gen.anything(),
).filter(map_is_bad)
#: device="cpu" with a map that places the model elsewhere: they disagree.
disagreeing_maps = st.sampled_from(["auto", "balanced", "sequential", {"": "disk"}])

#: Words each refusal's message must hold (the argument it is about).
NAMED = {
    "name": ("name", "model"),
    "dtype": ("dtype",),
    "device": ("device",),
    "device_map": ("device_map",),
    "placement": ("device_map",),
}


@cases(250)
@given(which=st.sampled_from(sorted(NAMED)), data=st.data())
def test_load_model_refuses_bad_arguments_before_reading_weights(
    no_model_load, tmp_path, monkeypatch, which, data
):
    count_case()
    monkeypatch.chdir(tmp_path)  # relative names resolve in an empty folder
    kwargs = {}
    if which == "name":
        name = data.draw(names, label="name")
        call = lambda: workbench.load_model(name)  # noqa: E731
    else:
        strategy = {
            "dtype": dtypes,
            "device": devices,
            "device_map": device_maps,
            "placement": disagreeing_maps,
        }[which]
        value = data.draw(strategy, label=which)
        kwargs = {"device": "cpu", "device_map": value} if which == "placement" else {which: value}
        call = lambda: workbench.load_model(None, **kwargs)  # noqa: E731
    message = refused(call)
    assert any(word in message for word in NAMED[which]), message
    assert os.listdir(tmp_path) == [], "load_model wrote into the working folder"
