"""The atlas analyzer form, built from the picked analyzer's own signature.

Every keyword parameter of the analyzer's ``run`` gets a typed field (number box with the
range of its check next to it, dropdown, checkbox, text box for text, lists and files), chosen
by the check's own :class:`~workbench.analyzers.params.Spec`. Defaults are the signature's; the
app starts in quick mode and then shows the quick task's sizes (``quick_params``). No field:
``progress`` (set by the app) and ``frames`` (DataFrames, Python API only).

The number boxes carry no HTML ``min``/``max``/``step``: Dash turns a value outside them into
``None`` before a callback sees it (the "got None" message of issue 18); the analyzer's own
check refuses it instead, naming the field, the value and the range.

Four fields keep fixed ids (:data:`FIXED`), the others are ``{"type": FIELD, "name": ...}``.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dash import ALL, Input, Output, State, dcc, html, no_update

from app import ids
from app.components import muted, number
from app.context import as_int
from workbench.analyzers.params import COMMON, Spec, spec_of
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash

    from app.context import AppContext

FIELD = "an-field"  # pattern-matching id type of a generated field
FORM = "an-form"  # the generated fields
FORM_CHECK = "an-form-check"  # the form's own check, as the user edits it
#: Parameters whose field has a fixed id (the page's tests address them); hidden when the
#: analyzer lacks the parameter.
FIXED = {
    "n_prompts": ids.AN_NPROMPTS,
    "causal": ids.AN_CAUSAL,
    "top_k": ids.AN_TOPK,
    "quick": ids.AN_QUICK,
}
#: Defaults of the app that differ from the signature's: it starts in quick mode.
APP_DEFAULTS = {"quick": True}
#: Kinds of parameter that get no field, and why.
NO_FIELD = {"callback": "set by the app", "frames": "Python API only"}
OMIT = object()  # a field left empty whose parameter then takes the analyzer's default


def wrap_id(name: str) -> str:
    """Id of the span around a fixed field (hidden when the analyzer lacks the parameter)."""
    return f"an-wrap-{name.replace('_', '-')}"


@dataclass(frozen=True)
class Field:
    """One parameter of an analyzer's ``run`` as the form shows it."""

    name: str
    spec: Spec
    default: Any  # the signature's
    minimum: float | None
    maximum: float | None


def analyzer_class(name: str) -> type:
    from workbench.analyzers import get_analyzer

    return type(get_analyzer(name))


def form_fields(name: str, lm: Any = None) -> list[Field]:
    """The fields of analyzer ``name``: every keyword parameter of its ``run`` except those
    :data:`NO_FIELD` leaves out, in signature order, with the range of its check resolved on
    ``lm`` (a model-dependent bound is None without a model)."""
    cls = analyzer_class(name)
    checks = {**COMMON, **cls.checks}
    signature = inspect.signature(cls.run).parameters
    out = []
    for param in cls.parameters():
        spec = spec_of(checks[param])
        if spec.kind in NO_FIELD:
            continue
        lo, hi = spec.bounds(lm)
        out.append(Field(param, spec, signature[param].default, lo, hi))
    return out


def shown_default(name: str, field: Field, quick: bool) -> Any:
    """The value a field starts with: the quick task's size in quick mode, the app's own
    default (:data:`APP_DEFAULTS`), else the signature's."""
    quick_params = analyzer_class(name).quick_params
    if quick and field.name in quick_params:
        return quick_params[field.name]
    return APP_DEFAULTS.get(field.name, field.default)


def range_hint(field: Field) -> str:
    """What a field takes, as its check says it: ``1..135``, ``> 0 and < 1``, ``>= 0``..."""
    spec, lo, hi = field.spec, field.minimum, field.maximum
    if spec.kind == "auto_or_integer":
        return "auto or an integer >= 1"
    low = f"> {spec.above}" if spec.above is not None else "" if lo is None else f">= {lo}"
    high = f"< {spec.below}" if spec.below is not None else "" if hi is None else f"<= {hi}"
    exact = lo is not None and hi is not None and spec.above is None and spec.below is None
    parts = [f"{lo}..{hi}" if exact else " and ".join(p for p in (low, high) if p)]
    if spec.kind == "list":
        parts.insert(0, "one a line" if spec.items == "text" else "comma-separated")
    if spec.kind == "file_or_list":
        parts.insert(0, "a file path or a JSON list")
    if spec.optional:
        parts.append("empty: none")
    return ", ".join(p for p in parts if p)


def _text(value: Any, items: str | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ("\n" if items == "text" else ", ").join(str(v) for v in value)
    return str(value)


def widget(field: Field, value: Any, id_: Any) -> Any:
    """The input of one field, holding ``value`` (a parameter value)."""
    kind = field.spec.kind
    shown = widget_value(field, value)
    if kind in ("integer", "number"):
        return number(id_, value, placeholder="default" if value is None else None)
    if kind == "flag":
        return dcc.Checklist(
            id=id_,
            options=[{"label": f" {field.name}", "value": "on"}],
            value=shown,
            inline=True,
            className="check",
        )
    if kind == "choice":
        return dcc.Dropdown(
            id=id_,
            options=[{"label": c, "value": c} for c in field.spec.choices],
            value=value,
            clearable=False,
            className="dropdown field-choice",
            style={"minWidth": "150px"},
        )
    if kind in ("list", "file_or_list") and field.spec.items == "text":
        return dcc.Textarea(id=id_, value=shown, className="ref-box", rows=2)
    placeholder = "JSON" if kind == "json" else "none"
    return dcc.Input(id=id_, type="text", value=shown, className="text", placeholder=placeholder)


def field_row(name: str, field: Field, quick: bool, id_: Any = None) -> html.Span:
    """Label, input and range hint of one field."""
    id_ = id_ or {"type": FIELD, "name": field.name}
    hint = range_hint(field)
    label = [] if field.spec.kind == "flag" else [muted(field.name)]
    return html.Span(
        className="inline-group field",
        title=f"{field.name}: {hint}" if hint else field.name,
        children=[
            *label,
            widget(field, shown_default(name, field, quick), id_),
            html.Span(hint, className="muted hint") if hint else None,
        ],
    )


def form_children(name: str, quick: bool, lm: Any = None) -> list[Any]:
    """The generated fields of analyzer ``name`` (the fixed ones live in the atlas layout) and
    a line naming the parameters left out."""
    cls = analyzer_class(name)
    kinds = {p: spec_of({**COMMON, **cls.checks}[p]).kind for p in cls.parameters()}
    left_out = "; ".join(f"{p}: {NO_FIELD[k]}" for p, k in kinds.items() if k in NO_FIELD)
    rows = [field_row(name, f, quick) for f in form_fields(name, lm) if f.name not in FIXED]
    return [
        html.Div(className="controls fields", children=rows),
        html.Div(f"Not in the form: {left_out}.", className="help"),
    ]


def fixed_state(name: str, quick: bool, lm: Any = None) -> dict[str, Any]:
    """``{parameter: value}`` of the fixed fields for analyzer ``name`` (absent: hidden)."""
    fields = {f.name: f for f in form_fields(name, lm)}
    return {p: shown_default(name, fields[p], quick) for p in FIXED if p in fields}


# -- reading the form --------------------------------------------------------------------------
def _item(value: str, items: str | None) -> Any:
    """One list item in its type where it reads as one (else the text, which the analyzer's
    check then refuses by name)."""
    if items in ("integer", "layer") and re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if items == "number":
        try:
            return float(value)
        except ValueError:
            return value
    return value


def field_value(field: Field, raw: Any) -> Any:
    """A field's input as the parameter's value (:data:`OMIT` for an empty JSON field); types
    and ranges are left to the analyzer's own check. Raises WorkbenchError naming the field for
    an empty required number or choice, or bad JSON."""
    spec, name = field.spec, field.name
    if spec.kind in ("integer", "number"):
        if raw is None or raw == "":
            if spec.optional:
                return None
            what = "an integer" if spec.kind == "integer" else "a number"
            hint = range_hint(field)
            raise WorkbenchError(
                f"{name} is empty or not a number; give {what}" + (f" ({hint})" if hint else "")
            )
        return raw
    if spec.kind == "flag":
        return bool(raw)
    if spec.kind == "choice":
        if raw is None:
            raise WorkbenchError(f"{name}: pick one of {', '.join(spec.choices)}")
        return raw
    text = "" if raw is None else str(raw)
    if spec.kind == "json":
        if not text.strip():
            return OMIT
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{name} must be JSON, got {text[:60]!r} ({exc.msg})") from None
    if not text.strip():
        return None if spec.optional else text
    if spec.kind == "list":
        parts = text.splitlines() if spec.items == "text" else re.split(r"[,\s]+", text)
        return [_item(p.strip(), spec.items) for p in parts if p.strip()]
    if spec.kind == "file_or_list" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{name}: a list must be JSON ({exc.msg})") from None
    if spec.kind == "auto_or_integer":
        return int(text) if re.fullmatch(r"\s*\d+\s*", text) else text.strip()
    return text.strip() if spec.kind in ("file", "file_or_list") else text


def fields_params(name: str, raw: dict[str, Any], lm: Any = None) -> dict[str, Any]:
    """The generated fields' inputs (``{parameter: input}``) as parameters of analyzer
    ``name`` (inputs of another analyzer's fields are dropped)."""
    out = {}
    for field in form_fields(name, lm):
        if field.name in raw and field.name not in FIXED:
            value = field_value(field, raw[field.name])
            if value is not OMIT:
                out[field.name] = value
    return out


def parse_params(text: str | None) -> dict[str, Any]:
    """The "more parameters" box as a dict (empty box: no parameters)."""
    if not text or not text.strip():
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(
            f'more parameters must be JSON, e.g. {{"prompt_tokens": 32}} ({exc.msg})'
        ) from None
    if not isinstance(params, dict):
        raise WorkbenchError('more parameters must be a JSON object, e.g. {"draws": 2}')
    return params


def form_values(n_prompts: Any, causal: Any, top_k: Any, quick: Any) -> dict[str, Any]:
    """The fixed fields as analyzer parameters: ``causal``, ``top_k``, ``quick`` (the
    checklists' values: a non-empty list is on), and ``n_prompts`` only when its box is
    filled (empty: the analyzer's default size, or its quick size).

    Raises:
        WorkbenchError: a box that is not a whole number >= 1, naming the box.
    """
    form = {"causal": bool(causal), "top_k": as_int(top_k, "top-k", 1), "quick": bool(quick)}
    if n_prompts not in (None, ""):
        form["n_prompts"] = as_int(n_prompts, "prompts", 1)
    return form


def analyzer_params(
    name: str,
    form: dict[str, Any],
    text: str | None,
    lm: Any,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The parameters of an analyzer run: the fixed fields the analyzer takes
    (:func:`form_values`; a filled prompts box for an analyzer without ``n_prompts`` is
    refused, not ignored), the generated ``fields`` (:func:`fields_params`), then the "more
    parameters" box (it wins), all checked by the analyzer's own check (the one the Python API
    runs: unknown names, types, ranges on ``lm``) before the job starts.

    Raises:
        WorkbenchError: a bad field or box, naming the parameter, the value and what is allowed.
    """
    from workbench.analyzers import AnalyzerArgumentError, get_analyzer

    box = parse_params(text)
    if "progress" in box:
        raise WorkbenchError("more parameters: progress is set by the app; remove it")
    analyzer = get_analyzer(name)
    if "n_prompts" in form and "n_prompts" not in analyzer.parameters():
        sizes = [p for p in analyzer.parameters() if p.startswith("n_")]
        raise AnalyzerArgumentError(
            f"prompts: {name} takes no number of prompts, got {form['n_prompts']}; leave the "
            "box empty" + (f" and set {' or '.join(sizes)} in more parameters" if sizes else "")
        )
    params = {**analyzer.select(form), **(fields or {}), **box}
    analyzer.check_params(lm, params)
    return params


def register(app: dash.Dash, wb: AppContext) -> None:
    """Rebuilding the form for the picked analyzer, quick mode's sizes, and checking the form
    as it is edited."""

    @app.callback(
        Output(FORM, "children"),
        Output(ids.AN_NPROMPTS, "value", allow_duplicate=True),
        Output(ids.AN_TOPK, "value"),
        Output(ids.AN_CAUSAL, "value"),
        *[Output(wrap_id(p), "style") for p in FIXED],
        Input(ids.AN_NAME, "value"),
        State(ids.AN_QUICK, "value"),
        prevent_initial_call=True,
    )
    def rebuild(name, quick):
        state = fixed_state(name, bool(quick), wb.lm)
        shown = [{"display": "inline-flex" if p in state else "none"} for p in FIXED]
        causal = ["causal"] if state.get("causal") else []
        top_k = state.get("top_k", 5)  # a hidden top-k is not sent
        children = form_children(name, bool(quick), wb.lm)
        return children, state.get("n_prompts"), top_k, causal, *shown

    @app.callback(
        Output({"type": FIELD, "name": ALL}, "value"),
        Output(ids.AN_NPROMPTS, "value", allow_duplicate=True),
        Input(ids.AN_QUICK, "value"),
        State(ids.AN_NAME, "value"),
        State({"type": FIELD, "name": ALL}, "id"),
        prevent_initial_call=True,
    )
    def quick_sizes(quick, name, field_ids):
        fields = {f.name: f for f in form_fields(name, wb.lm)}
        sized = analyzer_class(name).quick_params
        out = []
        for i in field_ids:
            field = fields.get(i["name"])
            if field is None or field.name not in sized:
                out.append(no_update)
                continue
            value = shown_default(name, field, bool(quick))
            out.append(widget_value(field, value))
        n = fields.get("n_prompts")
        n_prompts = shown_default(name, n, bool(quick)) if n and "n_prompts" in sized else no_update
        return out, n_prompts

    @app.callback(
        Output(FORM_CHECK, "children"),
        Input({"type": FIELD, "name": ALL}, "value"),
        *[Input(i, "value") for i in FIXED.values()],
        State({"type": FIELD, "name": ALL}, "id"),
        State(ids.AN_NAME, "value"),
        prevent_initial_call=True,
    )
    def check_form(values, n_prompts, causal, top_k, quick, field_ids, name):
        try:
            form = form_values(n_prompts, causal, top_k, quick)
            raw = {i["name"]: v for i, v in zip(field_ids, values, strict=False)}
            fields = fields_params(name, raw, wb.lm)
            analyzer_params(name, form, "", wb.lm, fields)
        except WorkbenchError as exc:
            return str(exc)
        return ""


def widget_value(field: Field, value: Any) -> Any:
    """``value`` as the field's input holds it (the inverse of :func:`field_value`)."""
    kind = field.spec.kind
    if kind in ("integer", "number", "choice"):
        return value
    if kind == "flag":
        return ["on"] if value else []
    if kind == "json":
        return "" if value is None else json.dumps(value, default=str)
    return _text(value, field.spec.items)
