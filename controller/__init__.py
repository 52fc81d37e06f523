"""corral's controller: compares agent reports with baked manifests, taints and replaces.

Decision logic is pure and lives apart from I/O; the gRPC service, the store, the
providers and the scheduler sit at the edges.
"""
