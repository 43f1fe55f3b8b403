"""The Patching view: clean vs corrupted prompt, each head's clean output patched into the
corrupted run (:func:`workbench.head_patching.patch_heads`: activation patching through the
intervention registry, Meng et al. 2022 / Wang et al. 2022 / Heimersheim & Nanda 2024), as a
layer x head grid of the fraction of the clean metric each head restores alone."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from app import figures, ids, jobs
from app.components import (
    QUIET_GRAPH_CONFIG,
    alert,
    button,
    cancel_button,
    controls,
    help_text,
    label,
    muted,
    tab,
    text_input,
)
from app.context import AppContext, JobControls, message_of, watchdog
from app.progress_text import ProgressText
from app.views.contributions import STALE_NOTE, head_grid, is_stale
from workbench.errors import WorkbenchError
from workbench.head_patching import patch_heads
from workbench.logit_lens import token_text

if TYPE_CHECKING:
    import dash

NAME = "patching"
PATCH_JOB = JobControls(
    "patch",
    (ids.PATCH_RUN,),
    ids.PATCH_CANCEL,
    ids.PATCH_BUSY,
    ids.PATCH_ERROR,
    status=ids.PATCH_STATUS,
)
#: The corrupted prompt offered with the default prompt (the IOI subject swapped).
DEFAULT_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
METRICS = {"logit_diff": "logit difference answer − foil", "logprob": "log-prob of the answer"}
EMPTY = "Give a corrupted prompt with the same token count and press Patch every head."


def compute(
    lm, clean: str, corrupted: str, chat: bool, metric: str, answer: str, foil: str, report
) -> dict[str, Any]:
    """Patch every head; JSON-able result. ``report(text)`` gets progress by layer."""
    start = time.perf_counter()

    line = ProgressText()

    def progress(_desc: str, done: int, total: int) -> None:
        report(line("patched layers", done, total) if done else "patching layers…")

    report("Clean and corrupted runs…")
    res = patch_heads(
        lm,
        clean,
        corrupted,
        chat=chat,
        metric=metric,
        answer=answer or None,
        foil=foil or None,
        progress=progress,
    )
    return {
        "prompt": clean,
        "corrupted": corrupted,
        "chat": chat,
        "metric": metric,
        "answer": token_text(lm, res.answer_id),
        "foil": None if res.foil_id is None else token_text(lm, res.foil_id),
        "clean": res.clean,
        "corrupted_metric": res.corrupted,
        "patched": res.patched.numpy().tolist(),
        "normalized": res.normalized.numpy().tolist(),
        "n_tokens": len(res.clean_tokens),
        "seconds": round(time.perf_counter() - start, 2),
    }


def layout(wb: AppContext) -> dcc.Tab:
    return tab(
        "Patching",
        NAME,
        ids.tab(NAME),
        help_text(
            "Activation patching per head: the corrupted prompt runs with one head's output "
            "(every position) taken from the clean prompt above. Each cell is the share of the "
            "clean metric that head alone restores, (patched − corrupted) / (clean − "
            "corrupted): 0 = nothing, 1 = all of it, negative = it moves the answer away."
        ),
        controls(
            label("corrupted prompt"),
            dcc.Input(
                id=ids.PATCH_CORRUPT,
                type="text",
                value=DEFAULT_CORRUPTED,
                placeholder="same token count as the prompt above",
                className="text wide",
                debounce=True,
            ),
        ),
        html.Div(id=ids.PATCH_TOKENS, className="help"),
        controls(
            label("metric"),
            dcc.RadioItems(
                id=ids.PATCH_METRIC,
                options=[{"label": f" {text}", "value": key} for key, text in METRICS.items()],
                value="logit_diff",
                inline=True,
                className="radio",
            ),
        ),
        controls(
            label("answer"),
            text_input(ids.PATCH_ANSWER, "blank = the clean run's next token"),
            muted("foil"),
            text_input(ids.PATCH_FOIL, "blank = the corrupted run's next token"),
            button("Patch every head", ids.PATCH_RUN, "primary"),
            cancel_button(ids.PATCH_CANCEL),
            html.Span(id=ids.PATCH_STATUS, className="status"),
        ),
        alert(ids.PATCH_ERROR),
        html.Div(id=ids.PATCH_SUMMARY, className="help"),
        dcc.Graph(
            id=ids.PATCH_GRAPH, figure=figures.empty_figure(EMPTY), config=QUIET_GRAPH_CONFIG
        ),
    )


def token_counts(lm, clean: str | None, corrupted: str | None, chat: bool) -> tuple[str, str]:
    """The as-you-type line under the corrupted prompt, and its class (error when they differ)."""
    if not (corrupted or "").strip():
        return "Type a corrupted prompt: the same sentence with the fact changed.", "help"
    try:
        n_clean = lm.encode(clean or "", chat=chat).n_tokens
        n_bad = lm.encode(corrupted, chat=chat).n_tokens
    except WorkbenchError as exc:
        return str(exc), "help error-text"
    if n_clean != n_bad:
        return (
            f"The prompt has {n_clean} tokens and the corrupted prompt {n_bad}: patching needs "
            "the same token count (edit it so that the two align token for token).",
            "help error-text",
        )
    return f"{n_clean} tokens each: the prompts align.", "help"


def summary(result: dict[str, Any], stale: bool) -> str:
    metric = (
        f"logit[{result['answer']!r}] − logit[{result['foil']!r}]"
        if result["metric"] == "logit_diff"
        else f"log p({result['answer']!r})"
    )
    normalized = np.asarray(result["normalized"], dtype=float)
    if np.isnan(normalized).all():
        best = "the clean and corrupted metrics are equal: there is nothing to restore"
    else:
        layer, head = np.unravel_index(np.nanargmax(normalized), normalized.shape)
        best = f"most restored by L{layer}H{head} ({normalized[layer, head]:+.2f})"
    return (
        f"{metric}: clean {result['clean']:.3f}, corrupted {result['corrupted_metric']:.3f} · "
        f"{best} · {result['n_tokens']} tokens · {result['seconds']:.1f} s"
        + (STALE_NOTE if stale else "")
    )


def patch_figure(result: dict[str, Any]):
    normalized = np.asarray(result["normalized"], dtype=float)
    finite = normalized[np.isfinite(normalized)]
    bound = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    return head_grid(
        normalized,
        f"Share of the clean metric restored by patching one head ({result['n_tokens']} tokens)",
        "restored",
        "L%{x}H%{y}<br>restored %{z:+.3f}",
        bound=bound,
    )


def register(app: dash.Dash, wb: AppContext) -> None:
    lm = wb.lm

    @app.callback(
        Output(ids.PATCH_TOKENS, "children"),
        Output(ids.PATCH_TOKENS, "className"),
        Input(ids.PATCH_CORRUPT, "value"),
        Input(ids.PROMPT, "value"),
        Input(ids.CHAT, "value"),
    )
    def check_counts(corrupted, prompt, chat):
        return token_counts(lm, prompt, corrupted, bool(chat))

    @app.callback(
        Output(ids.PATCH_RESULT, "data"),
        Output(ids.PATCH_ERROR, "children"),
        Input(ids.PATCH_RUN, "n_clicks"),
        State(ids.PROMPT, "value"),
        State(ids.PATCH_CORRUPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.PATCH_METRIC, "value"),
        State(ids.PATCH_ANSWER, "value"),
        State(ids.PATCH_FOIL, "value"),
        State(ids.SESSION, "data"),
        **PATCH_JOB.background([Output(ids.PATCH_STATUS, "children")]),
    )
    def patch_job(set_progress, n, prompt, corrupted, chat, metric, answer, foil, sid):
        try:
            jobs.setup_worker(wb.job_threads)
            if not (corrupted or "").strip():
                raise WorkbenchError("the corrupted prompt is empty; type one above")
            result = compute(
                lm, prompt, corrupted, bool(chat), metric, answer or "", foil or "", set_progress
            )
            set_progress(f"done in {result['seconds']:.1f} s")
            return result, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "Patching")
        finally:
            wb.mark_done(sid, PATCH_JOB.kind, n)

    watchdog(app, wb, PATCH_JOB)

    @app.callback(
        Output(ids.PATCH_GRAPH, "figure"),
        Input(ids.PATCH_RESULT, "data"),
        prevent_initial_call=True,
    )
    def draw(result):
        return patch_figure(result) if result else figures.empty_figure(EMPTY)

    @app.callback(
        Output(ids.PATCH_SUMMARY, "children"),
        Input(ids.PATCH_RESULT, "data"),
        Input(ids.PROMPT, "value"),
        Input(ids.CHAT, "value"),
        prevent_initial_call=True,
    )
    def show_summary(result, prompt, chat):
        return summary(result, is_stale(result, prompt, chat)) if result else ""
