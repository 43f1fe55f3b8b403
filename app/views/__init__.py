"""The app's views. Each view module has ``layout(ctx)`` (its tab) and ``register(app, ctx)``
(its callbacks); :data:`TABS` is the order of the tabs. The prompt bar (:mod:`.prompt`) sits
above the tabs and :mod:`.compare` is the result part of the Intervene view."""

from __future__ import annotations

from app.views import atlas, contributions, explorer, export, intervene, lens, patching

#: The tabbed views, in order (the first is shown on load).
TABS = (explorer, atlas, intervene, contributions, lens, patching, export)
