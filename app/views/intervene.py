"""The Intervene view: ablate or steer heads on the prompt and compare greedy continuations.

Modes are the core's recipes (:mod:`workbench.interventions.recipes`, built through the
intervention registry) whose options this view has inputs for; their defaults are the core's
constants. The job (:func:`app.jobs.run_intervention`) measures per-position KL and target
log-prob changes; the result is drawn side by side (:mod:`app.views.compare`).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from dash import Input, Output, State, ctx, dcc, html, no_update

import workbench
from app import components as ui
from app import figures, ids, jobs
from app.context import AppContext, JobControls, as_int, message_of, watchdog
from app.views import compare
from workbench.errors import WorkbenchError
from workbench.interventions import ACT_BETA, FOCUS_SCALE, PASTA_ALPHA, recipes

if TYPE_CHECKING:
    import dash


INTERVENE_JOB = JobControls(
    "iv", (ids.IV_RUN,), ids.IV_CANCEL, ids.IV_BUSY, ids.IV_ERROR, status=ids.IV_STATUS
)

NAME = "intervene"
MAX_NEW_TOKENS = 512
DEFAULT_MODE = "zero"


def option_panels() -> dict[str, list[Any]]:
    """The option inputs of each mode that has options, by mode."""
    return {
        "mean": [
            ui.muted(
                "reference prompts (one per line): the head's output is replaced by its mean "
                "over them"
            ),
            dcc.Textarea(id=ids.IV_REF, value=jobs.DEFAULT_REFERENCE, className="ref-box"),
        ],
        "pasta": [
            ui.muted("emphasize"),
            ui.text_input(ids.IV_EMPH, "text of the prompt to emphasize"),
            ui.button("Use selection", ids.IV_USE_SEL, title="select text in the prompt box first"),
            ui.muted("alpha"),
            ui.number(ids.IV_ALPHA, PASTA_ALPHA, min=0.001, max=1, step=0.001),
        ],
        "act": [
            ui.muted("beta (attention kept on hidden sinks)"),
            ui.number(ids.IV_BETA, ACT_BETA, min=0, max=1, step=0.05),
        ],
        "focus": [
            ui.muted("directions file"),
            ui.text_input(ids.IV_FOCUS_PATH, "/path/to/focus_directions.safetensors"),
            ui.muted("scale"),
            ui.number(ids.IV_SCALE, FOCUS_SCALE, step="any"),
            ui.muted("(heads come from the file)"),
        ],
    }


#: The recipe options this view has inputs for (mode -> its panel above).
OPTION_INPUTS = ("reference", "emphasize", "alpha", "beta", "focus_path", "scale")
MODES = recipes.modes(OPTION_INPUTS)
#: Modes with options, in display order (each has a panel of ``option_panels``).
PANEL_MODES = tuple(mode for mode in MODES if recipes.RECIPES[mode].options)


def layout(wb: AppContext) -> dcc.Tab:
    panels = option_panels()
    return ui.tab(
        "Intervene",
        NAME,
        ids.tab(NAME),
        ui.help_text(
            "Ablate or steer heads on the prompt above and compare greedy "
            "continuations. KL(base ‖ intervened) is measured on the next-token "
            "distribution at every prompt position."
        ),
        ui.controls(
            ui.label("heads"),
            ui.text_input(ids.IV_HEADS, "L5H3, L7H1  (L5H* = all heads of layer 5)", debounce=True),
            ui.button("Add selected head", ids.IV_ADD_SEL),
            ui.muted("or top"),
            ui.number(ids.IV_K, 5, min=1, step=1),
            ui.muted("of"),
            dcc.Dropdown(
                id=ids.IV_FROM, options=[], placeholder="an analyzer you ran", className="dropdown"
            ),
            ui.button("Use top-k", ids.IV_TOPK),
        ),
        html.Div(id=ids.IV_HEADS_INFO, className="help"),
        ui.controls(
            ui.label("mode"),
            dcc.RadioItems(
                id=ids.IV_MODE,
                options=[{"label": f" {text}", "value": mode} for mode, text in MODES.items()],
                value=DEFAULT_MODE,
                className="radio modes",
            ),
        ),
        *[
            html.Div(id=ids.iv_options(mode), className="mode-opts", children=panels[mode])
            if mode == "mean"  # a text box under its caption, not a row of controls
            else ui.controls(*panels[mode], extra="mode-opts", id=ids.iv_options(mode))
            for mode in PANEL_MODES
        ],
        ui.controls(
            ui.label("targets"),
            ui.text_input(ids.IV_TARGETS, "comma-separated: Mary, John (leading space counts)"),
            ui.muted("new tokens"),
            ui.number(ids.IV_N, 20, min=1, max=256, step=1),
            ui.button("Apply", ids.IV_RUN, "primary"),
            ui.cancel_button(ids.IV_CANCEL),
            html.Span(id=ids.IV_STATUS, className="status"),
        ),
        ui.alert(ids.IV_ERROR),
        html.Div(id=ids.IV_COMPARE),
        dcc.Graph(
            id=ids.KL_GRAPH,
            figure=figures.empty_figure("Apply an intervention to see its effect per token."),
            config=ui.GRAPH_CONFIG,
        ),
    )


#: Copies the prompt box's selected text into the "emphasize" box (in the browser).
USE_SELECTION_JS = """
function(n) {
    const nu = window.dash_clientside.no_update;
    if (!n) { return [nu, nu]; }
    const el = document.getElementById(PROMPT_ID);
    if (!el) { return [nu, nu]; }
    const text = el.value.substring(el.selectionStart, el.selectionEnd);
    if (!text) {
        return [nu, 'select text in the prompt box first, then press the button'];
    }
    return [text, nu];
}
""".replace("PROMPT_ID", json.dumps(ids.PROMPT))


def add_head(text: str | None, hid: str) -> str:
    """The heads box with ``hid`` appended unless it is already there (entries kept as typed,
    split like :func:`workbench.parse_heads` splits them)."""
    current = [p for p in re.split(r"[,;\s]+", text or "") if p]
    if hid.lower() not in (c.lower() for c in current):
        current.append(hid)
    return ", ".join(current)


def uses_heads(mode: str | None) -> bool:
    recipe = recipes.RECIPES.get(mode or "")
    return recipe is None or recipe.uses_heads


def register(app: dash.Dash, wb: AppContext) -> None:
    """Head picking, mode options, the intervention job and drawing its result."""
    lm, info = wb.lm, wb.info

    @app.callback(
        Output(ids.IV_HEADS_INFO, "children"),
        Output(ids.IV_HEADS_INFO, "className"),
        Input(ids.IV_HEADS, "value"),
        Input(ids.IV_MODE, "value"),
    )
    def heads_info(text, mode):
        if not uses_heads(mode):
            return "Focus directions act on the heads stored in the file.", "help"
        if not text or not text.strip():
            hint = "Pick heads: type ids, add the selected head, or take an analyzer's top-k."
            return hint, "help"
        try:
            heads = jobs.parse_head_list(lm, text)
        except WorkbenchError as exc:
            return str(exc), "help error-text"
        parts = workbench.format_heads(heads, info.n_heads).split(", ")  # whole layers: L5H*
        shown = ", ".join(parts[:12]) + (" …" if len(parts) > 12 else "")
        return f"{len(heads)} head{'s' if len(heads) != 1 else ''}: {shown}", "help"

    @app.callback(
        Output(ids.IV_HEADS, "value"),
        Output(ids.IV_ERROR, "children", allow_duplicate=True),
        Input(ids.IV_ADD_SEL, "n_clicks"),
        Input(ids.IV_TOPK, "n_clicks"),
        State(ids.SEL_HEAD, "data"),
        State(ids.IV_HEADS, "value"),
        State(ids.IV_FROM, "value"),
        State(ids.IV_K, "value"),
        State(ids.ATLAS_RESULTS, "data"),
        prevent_initial_call=True,
    )
    def pick_heads(_add, _top, sel, text, source, k, results):
        try:
            if ctx.triggered_id == ids.IV_ADD_SEL:
                return add_head(text, workbench.head_id(sel["layer"], sel["head"])), ""
            if not source or source not in (results or {}):
                raise WorkbenchError(
                    "no analyzer result to take heads from: run one in the Head atlas first, "
                    "then pick it here"
                )
            k = as_int(k, "k", 1, info.n_layers * info.n_heads)
            heads = jobs.top_heads_from_records(results[source]["records"], k)
            return workbench.format_heads(heads, info.n_heads), ""
        except WorkbenchError as exc:
            return no_update, str(exc)

    @app.callback(
        *[Output(ids.iv_options(mode), "style") for mode in PANEL_MODES],
        Output(ids.IV_HEADS, "disabled"),
        Input(ids.IV_MODE, "value"),
    )
    def mode_options(mode):
        shown = [{"display": "flex" if mode == m else "none"} for m in PANEL_MODES]
        return *shown, not uses_heads(mode)

    app.clientside_callback(
        USE_SELECTION_JS,
        Output(ids.IV_EMPH, "value"),
        Output(ids.IV_EMPH, "placeholder"),
        Input(ids.IV_USE_SEL, "n_clicks"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output(ids.IV_RESULT, "data"),
        Output(ids.IV_ERROR, "children"),
        Input(ids.IV_RUN, "n_clicks"),
        State(ids.PROMPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.IV_HEADS, "value"),
        State(ids.IV_MODE, "value"),
        State(ids.IV_REF, "value"),
        State(ids.IV_EMPH, "value"),
        State(ids.IV_ALPHA, "value"),
        State(ids.IV_BETA, "value"),
        State(ids.IV_FOCUS_PATH, "value"),
        State(ids.IV_SCALE, "value"),
        State(ids.IV_TARGETS, "value"),
        State(ids.IV_N, "value"),
        State(ids.SESSION, "data"),
        **INTERVENE_JOB.background([Output(ids.IV_STATUS, "children")]),
    )
    def intervene_job(
        set_progress, n, prompt, chat, heads, mode, ref, emph, alpha, beta, focus, scale,
        targets, n_new, sid,
    ):  # fmt: skip
        try:
            jobs.setup_worker(wb.job_threads)
            new_tokens = as_int(n_new, "new tokens", 1, MAX_NEW_TOKENS)
            options = recipes.Options(
                prompt=prompt or "",
                chat=bool(chat),
                reference=(ref or "").splitlines(),
                emphasize=emph or "",
                alpha=alpha,
                beta=beta,
                focus_path=focus or "",
                scale=scale,
            )
            result = jobs.run_intervention(
                lm,
                prompt,
                chat=bool(chat),
                heads_text=heads,
                mode=mode,
                options=options,
                targets=[t for t in (targets or "").split(",") if t.strip()],
                new_tokens=new_tokens,
                report=set_progress,
            )
            set_progress(f"done in {result['seconds']:.1f} s")
            return result, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "The intervention")
        finally:
            wb.mark_done(sid, INTERVENE_JOB.kind, n)

    watchdog(app, wb, INTERVENE_JOB)
    compare.register(app, wb)
