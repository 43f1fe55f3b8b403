"""``python -m workbench.cli ...``: the same as the ``workbench`` console script."""

from __future__ import annotations

import sys

from workbench.cli import main

sys.exit(main())
