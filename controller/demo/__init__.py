"""``corral demo``: a local fleet on SQLite and the local provider, drift injected, replaced."""
