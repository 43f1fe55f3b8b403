"""Dash app of the workbench (uses only ``workbench``'s public API)."""
