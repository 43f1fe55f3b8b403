"""The prompt bar: type a prompt, run one forward pass (or generate first), see the status.

A run fills :data:`app.ids.RUN_META` (tokens, sizes) and the session's arrays in the store;
every other view reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Input, Output, State, ctx, dcc, html, no_update

from app import ids, jobs
from app.components import alert, button, cancel_button, controls, help_text, muted, number
from app.context import AppContext, JobControls, as_int, message_of, watchdog

if TYPE_CHECKING:
    import dash


RUN_JOB = JobControls(
    "run",
    (ids.RUN_FORWARD, ids.RUN_GENERATE),
    ids.RUN_CANCEL,
    ids.RUN_BUSY,
    ids.PROMPT_ERROR,
    status=ids.RUN_STATUS,
)

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"
MAX_NEW_TOKENS = 512


def layout() -> html.Section:
    """The prompt card."""
    return html.Section(
        className="card",
        children=[
            html.Div(
                className="card-title-row",
                children=[
                    html.H3("Prompt"),
                    help_text(
                        "Tokenized exactly as typed. Run = one forward pass over the prompt; "
                        "Generate = greedy continuation first, then the views show prompt + "
                        "continuation."
                    ),
                ],
            ),
            dcc.Textarea(
                id=ids.PROMPT,
                value=DEFAULT_PROMPT,
                className="prompt-box",
                placeholder="Type a prompt…",
                spellCheck=False,
            ),
            controls(
                dcc.Checklist(
                    id=ids.CHAT,
                    options=[{"label": " chat template", "value": "chat"}],
                    value=[],
                    inline=True,
                    className="check",
                ),
                button("Run forward", ids.RUN_FORWARD, "primary"),
                html.Div(
                    className="inline-group",
                    children=[
                        button("Generate", ids.RUN_GENERATE),
                        number(ids.N_NEW, 20, min=1, max=MAX_NEW_TOKENS, step=1),
                        muted("new tokens"),
                    ],
                ),
                cancel_button(ids.RUN_CANCEL),
                html.Span(id=ids.RUN_STATUS, className="status"),
            ),
            alert(ids.PROMPT_ERROR),
            html.Div(id=ids.CONTINUATION),
        ],
    )


def continuation_view(meta: dict[str, Any]) -> Any:
    """The generated continuation after the end of the prompt (None for a plain run)."""
    if meta.get("generated") is None:
        return None
    gen = meta["generated"]
    return html.Div(
        className="continuation",
        children=[
            html.Span("Continuation ", className="label"),
            html.Span(meta["prompt"][-200:], className="muted"),
            html.Mark(gen if gen else "(the model ended its turn at once)", className="gen"),
        ],
    )


def run_status(meta: dict[str, Any]) -> str:
    long_prompt = " · long prompt: pooled overview, exact rows on demand"
    return f"{meta['n_tokens']} tokens · {meta['seconds']:.1f} s" + (
        "" if meta["full_maps"] else long_prompt
    )


def register(app: dash.Dash, wb: AppContext) -> None:
    """The run job, its watchdog, and clearing a stale error when the prompt changes."""

    @app.callback(
        Output(ids.RUN_META, "data"),
        Output(ids.PROMPT_ERROR, "children"),
        Output(ids.CONTINUATION, "children"),
        Input(ids.RUN_FORWARD, "n_clicks"),
        Input(ids.RUN_GENERATE, "n_clicks"),
        State(ids.PROMPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.N_NEW, "value"),
        State(ids.SESSION, "data"),
        State(ids.RUN_META, "data"),
        **RUN_JOB.background([Output(ids.RUN_STATUS, "children")]),
    )
    def run_job(set_progress, n_fwd, n_gen, prompt, chat, n_new, sid, previous):
        try:
            jobs.setup_worker(wb.job_threads)
            new_tokens = 0
            if ctx.triggered_id == ids.RUN_GENERATE:
                new_tokens = as_int(n_new, "new tokens", 1, MAX_NEW_TOKENS)
            meta = jobs.run_prompt(
                wb.lm,
                wb.store,
                sid,
                prompt,
                chat=bool(chat),
                new_tokens=new_tokens,
                previous_run=(previous or {}).get("run_id"),
                report=set_progress,
            )
            set_progress(run_status(meta))
            return meta, "", continuation_view(meta)
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "The run"), no_update
        finally:
            wb.mark_done(sid, RUN_JOB.kind, n_fwd, n_gen)

    watchdog(app, wb, RUN_JOB)

    # an error about the previous prompt goes away as soon as the prompt is edited
    app.clientside_callback(
        "function(_value) { return ''; }",
        Output(ids.PROMPT_ERROR, "children", allow_duplicate=True),
        Input(ids.PROMPT, "value"),
        prevent_initial_call=True,
    )
