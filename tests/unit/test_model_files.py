"""A model described from its files alone (``workbench info``) equals the loaded model's
description, for the embedded model and a tiny model of every architecture row."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tiny_models import FAMILIES, tiny_model
from workbench.errors import ModelFilesError
from workbench.model_files import describe_files, weights_summary
from workbench.models import describe

#: Fields that differ by design: a loaded model has a device.
SAME = ("architecture", "n_layers", "n_heads", "n_kv_heads", "head_dim", "max_context",
        "positional", "n_params", "dtype")  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_files_describe_a_tiny_model_as_loading_it_does(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    from_files = describe_files(tmp_path)
    loaded = describe(model, tmp_path.name, str(tmp_path))
    assert from_files is not None
    for field in SAME:
        assert getattr(from_files, field) == getattr(loaded, field), field
    assert from_files.device == "not loaded"


@pytest.mark.model
def test_files_describe_the_embedded_model_as_loading_it_does(lm):
    from_files = describe_files(None)
    assert from_files is not None
    for field in SAME:
        assert getattr(from_files, field) == getattr(lm.info, field), field


def test_truncated_weights_are_refused_from_the_header(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:6])
    with pytest.raises(ModelFilesError, match="truncated or corrupt"):
        weights_summary(tmp_path)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=128)).eval()


def test_files_describe_gpt2_whose_keys_have_other_names(tmp_path):
    model = _tiny_gpt2()
    model.save_pretrained(tmp_path)
    from_files, loaded = describe_files(tmp_path), describe(model, "x", str(tmp_path))
    for field in SAME:
        assert getattr(from_files, field) == getattr(loaded, field), field


def test_info_from_files_imports_no_torch(tmp_path):
    _tiny_gpt2().save_pretrained(tmp_path)
    code = (
        "import sys; from workbench.cli import main; "
        f"rc = main(['info', '--model', {str(tmp_path)!r}, '--json']); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(rc or (3 if bad else 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"n_layers": 2' in out.stdout and '"head_dim": 8' in out.stdout
