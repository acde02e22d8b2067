"""Sweeps and the `trh` command (the top layer: nothing imports it)."""
