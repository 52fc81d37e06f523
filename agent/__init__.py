"""corral's agent: scans a root, bakes manifests, and reports to the controller.

The agent is an observer: it never writes to the root it watches. It owns the
manifest format, which the controller imports; nothing here imports the
controller.
"""
