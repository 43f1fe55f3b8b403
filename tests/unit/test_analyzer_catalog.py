"""The analyzer catalog (plain data for ``scan --list``) equals the registry of classes."""

from __future__ import annotations

import subprocess
import sys


def test_catalog_lists_exactly_the_registered_analyzers():
    from workbench.analyzer_catalog import CATALOG
    from workbench.analyzers import ANALYZERS

    assert set(CATALOG) == set(ANALYZERS)
    for name, cls in ANALYZERS.items():
        assert CATALOG[name].summary == cls.summary, name
        assert CATALOG[name].module == cls.__module__, name


def test_catalog_and_cli_help_import_no_torch():
    code = (
        "import sys, workbench.cli, workbench.analyzer_catalog, probes.errors; "
        "import workbench.errors; "
        "bad = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
