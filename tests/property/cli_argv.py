"""Command lines for the CLI properties: a valid base line per command, and mutations that make
it invalid by construction (one bad option value, an unknown option, a missing or conflicting
option). Option values are strings as a shell gives them: any text except NUL (which no real
command line holds), lone surrogates included (how Python shows bytes that are not UTF-8)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from tests.property import strategies as gen
from tests.property.analyzer_values import bad as bad_param
from tests.property.analyzer_values import is_json
from tests.property.support import device_is_usable
from workbench.analyzers import ANALYZERS

MISSING = "/nonexistent-workbench-folder"
UNWRITABLE = "/proc"  # exists; no file can be created in it (root included)
DTYPE_NAMES = {"float32", "fp32", "float16", "fp16", "bfloat16", "bf16"}
STRATEGIES = {"auto", "balanced", "balanced_low_0", "sequential"}
FORMATS = {"png", "svg", "pdf"}

words = st.one_of(gen.texts, gen.surrogate_text).filter(lambda s: "\x00" not in s)


@dataclass(frozen=True)
class Paths:
    """Test files: a folder, a text file, an empty file (``workdir`` is the working folder)."""

    workdir: Path
    folder: Path
    plain: Path
    empty: Path


def int_ok(text: str, lo: int, hi: int | None = None) -> bool:
    """What ``type=int`` parses, within ``lo..hi``."""
    try:
        value = int(text)
    except ValueError:
        return False
    return value >= lo and (hi is None or value <= hi)


def float_ok(text: str, lo: float | None = None) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and (lo is None or value >= lo)


def bad_int(lo: int, hi: int | None = None) -> st.SearchStrategy[str]:
    return st.one_of(words, gen.ints.map(str), gen.floats.map(repr)).filter(
        lambda s: not int_ok(s, lo, hi)
    )


def bad_float(lo: float | None = None) -> st.SearchStrategy[str]:
    return st.one_of(words, gen.floats.map(repr), st.sampled_from(["nan", "inf", "-inf"])).filter(
        lambda s: not float_ok(s, lo)
    )


def _dtype_bad(text: str) -> bool:
    return text.lower() not in DTYPE_NAMES


def _map_bad(text: str) -> bool:
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return True
        if not isinstance(value, dict):
            return True
        return any(
            v != "disk" and device_is_usable(f"cuda:{v}" if type(v) is int else v) is False
            for v in value.values()
        )
    return text not in STRATEGIES and device_is_usable(text) is False


def _figures_bad(text: str) -> bool:
    if text.strip().lower() == "none":
        return False
    return any(p.strip().lower() not in FORMATS for p in text.split(",") if p.strip())


def model_options(many_devices: bool = True) -> list[st.SearchStrategy[list[str]]]:
    """Bad ``--model``, ``--dtype``, ``--device``, ``--device-map`` values."""
    out = [
        st.one_of(words.map(lambda t: f"{MISSING}/{t}"), words.map(lambda t: f"no-such-org/x{t}"))
        .filter(lambda s: "\x00" not in s)
        .map(lambda m: ["--model", m]),
        words.filter(_dtype_bad).map(lambda d: ["--dtype", d]),
        st.one_of(words, st.sampled_from(["meta", "cuda:99", "gpu", "cpu:x"]))
        .filter(lambda d: device_is_usable(d) is False)
        .map(lambda d: ["--device", d]),
    ]
    if many_devices:
        maps = st.one_of(
            words,
            st.sampled_from(["{", "{'': 'cpu'}", '{"": "gpu"}', '{"": 99}', '{"a": "meta"}']),
            st.dictionaries(words, words, min_size=1, max_size=2).map(json.dumps),
        )
        out.append(maps.filter(_map_bad).map(lambda m: ["--device-map", m]))
    return out


def prompt_options(paths: Paths) -> st.SearchStrategy[list[str]]:
    """``--prompt`` values refused before any model: blank, ``@`` with no file, a missing,
    empty or folder file, a bare file name."""
    values = st.one_of(
        st.sampled_from(["", " ", "\t", "@", "prompts.txt", "notes.JSONL", f"@{paths.empty}"]),
        st.sampled_from([f"@{paths.folder}", f"@{MISSING}/p.txt"]),
        words.map(lambda t: f"@{MISSING}/{t}"),
        st.from_regex(r"[a-z]{1,8}\.(txt|jsonl)", fullmatch=True),
    )
    return values.map(lambda v: ["--prompt", v])


def out_options(paths: Paths, suffix: str) -> st.SearchStrategy[list[str]]:
    """``--out`` values no file ``*{suffix}`` can be written to."""
    values = st.one_of(
        st.sampled_from(
            [
                str(paths.folder),
                str(paths.folder / "x.png"),
                f"{MISSING}/x{suffix}",
                str(paths.plain / f"x{suffix}"),
                f"{UNWRITABLE}/x{suffix}",
            ]
        ),
        words.map(lambda t: f"{MISSING}/{t}{suffix}"),
    )
    return values.map(lambda v: ["--out", v])


def unknown_options() -> st.SearchStrategy[list[str]]:
    return st.from_regex(r"--zz[a-z\-]{0,8}", fullmatch=True).flatmap(
        lambda opt: st.one_of(st.just([opt]), words.map(lambda v: [opt, v]))
    )


def _scan_param(model: bool) -> st.SearchStrategy[list[str]]:
    def draw(pair: tuple[str, str]) -> st.SearchStrategy[list[str]]:
        name, param = pair
        values = bad_param(param, model=model, json_only=True).filter(is_json)
        return values.map(lambda v: ["--analyzer", name, "--param", f"{param}={json.dumps(v)}"])

    pairs = [(n, p) for n in sorted(ANALYZERS) for p in ANALYZERS[n].parameters()]
    return st.sampled_from([p for p in pairs if p[1] != "progress"]).flatmap(draw)


def mutations(command: str, paths: Paths) -> list[st.SearchStrategy[list[str]]]:
    """Argument lists that, appended to (or replacing options of) :data:`BASE` ``command``,
    make it invalid with no model needed to see it."""
    common = [unknown_options()]
    heads = gen.bad_head_text(with_star=True).filter(lambda s: "\x00" not in s and s[:1] != "-")
    table = {
        "info": [*model_options()],
        "capture": [
            *model_options(),
            prompt_options(paths),
            bad_int(0).map(lambda v: ["--layer", v]),
            bad_int(0).map(lambda v: ["--head", v]),
            out_options(paths, ".npz"),
        ],
        "bench": [
            *model_options(),
            st.lists(st.one_of(words, gen.ints.map(str)), max_size=3)
            .map(",".join)
            .filter(lambda s: not _seq_ok(s))
            .map(lambda s: ["--seq", s]),
            bad_int(1).map(lambda v: ["--repeat", v]),
            bad_int(0, 16).map(lambda v: ["--load", v]),
            st.just(["--quick"]),  # --quick needs --analyzers
        ],
        "generate": [
            *model_options(),
            prompt_options(paths),
            heads.map(lambda h: ["--ablate", h]),
            heads.map(lambda h: ["--pasta", h, "--emphasize", "cat"]),
            st.just(["--pasta", "L5H3"]),
            st.just(["--ablate", "", "--emphasize", "cat"]),
            words.filter(lambda m: m not in ("zero", "mean", "uniform", "scale")).map(
                lambda m: ["--mode", m]
            ),
            st.just(["--mode", "mean"]),
            st.just(["--reference", str(paths.plain)]),
            st.sampled_from([f"{MISSING}/r.txt", str(paths.empty), str(paths.folder)]).map(
                lambda r: ["--mode", "mean", "--reference", r]
            ),
            bad_float().map(lambda v: ["--mode", "scale", "--factor", v]),
            bad_float().map(lambda v: ["--alpha", v]),
            bad_int(1).map(lambda v: ["--max-new-tokens", v]),
        ],
        "scan": [
            *model_options(),
            words.filter(lambda a: a not in ANALYZERS).map(lambda a: ["--analyzer", a]),
            out_options(paths, ".csv"),
            words.map(lambda t: ["--prompts", f"{MISSING}/{t}.txt"]),
            st.just(["--prompts", str(paths.empty)]),
            bad_int(1).map(lambda v: ["--top", v]),
            words.filter(lambda p: "=" not in p or not p.partition("=")[0].strip()).map(
                lambda p: ["--param", p]
            ),
            st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
            .filter(lambda k: k not in ANALYZERS["sinks"].parameters())
            .map(lambda k: ["--param", f"{k}=3"]),
            st.just(["--param", "seed=1", "--param", "seed=2"]),
            st.just(["--param", "progress=false"]),
            _scan_param(model=False),
        ],
        "organism": [
            *model_options(),
            bad_int(1).map(lambda v: ["--steps", v]),
            bad_int(0, 2**32 - 1).map(lambda v: ["--seed", v]),
        ],
        "report": [
            *model_options(many_devices=False),
            st.lists(st.one_of(words, st.sampled_from(sorted(ANALYZERS))), min_size=1, max_size=3)
            .map(",".join)
            .filter(_analyzers_bad)
            .map(lambda a: ["--analyzers", a]),
            *[
                bad_int(lo).map(lambda v, o=opt: [o, v])
                for opt, lo in [
                    ("--shard-size", 1),
                    ("--top-k", 1),
                    ("--draws", 1),
                    ("--seed", 0),
                    ("--n-prompts", 1),
                    ("--examples", 0),
                    ("--workers", 1),
                ]
            ],
            st.one_of(bad_float(0), st.floats(0.001, 8).map(repr)).map(lambda v: ["--num-gpus", v]),
            words.filter(lambda a: a.strip() != "").map(lambda a: ["--address", a]),
            words.filter(lambda e: e not in ("serial", "ray")).map(lambda e: ["--executor", e]),
            words.filter(_figures_bad).map(lambda f: ["--figures", f]),
            st.just(["--out", str(paths.plain)]),
            words.map(lambda t: ["--prompts", f"{MISSING}/{t}.txt"]),
        ],
        "app": [
            bad_int(0, 65535).map(lambda v: ["--port", v]),
            st.sampled_from(["no such host", "999.1.1.1", "::zz", "exa mple.com", "-"]).map(
                lambda h: ["--host", h]
            ),
            words.map(lambda t: ["--model", f"{MISSING}/{t}"]),
        ],
    }
    return [*table[command], *common]


def _analyzers_bad(text: str) -> bool:
    """Unknown or repeated names (no name at all means every analyzer: not bad)."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    return any(a not in ANALYZERS for a in names) or len(set(names)) != len(names)


def _seq_ok(text: str) -> bool:
    parts = [p for p in text.split(",") if p.strip()]
    return bool(parts) and all(int_ok(p, 1) for p in parts)


def base(command: str, paths: Paths) -> list[str]:
    """A valid command line of ``command`` (it would do real work: load a model)."""
    return {
        "info": ["info"],
        "capture": ["capture", "--prompt", "hi there", "--layer", "0", "--head", "0", "--out",
                    str(paths.workdir / "m.npz")],
        "bench": ["bench", "--seq", "8", "--repeat", "1", "--no-eager"],
        "generate": ["generate", "--prompt", "the cat sat", "--ablate", "L5H3",
                     "--max-new-tokens", "2"],
        "scan": ["scan", "--analyzer", "sinks", "--quiet", "--out", str(paths.workdir / "t.csv")],
        "organism": ["organism", "--quiet"],
        "report": ["report", "--analyzers", "sinks", "--quiet", "--figures", "none", "--out",
                   str(paths.workdir / "rep")],
        "app": ["app"],
    }[command]  # fmt: skip


__all__ = ["Paths", "base", "mutations"]
