"""OCI images as bake sources: read an archive or layout and apply its layers in memory.

- :mod:`agent.image.oci.source` finds an image's manifest, config and layer blobs in
  an ``oci-archive:``, ``oci:`` or ``docker-archive:`` source;
- :mod:`agent.image.oci.layers` streams each layer and applies it (whiteouts, opaque
  directories, hard links) to an in-memory tree of entries, so baking an image
  artifact gives the manifest that baking its unpacked root gives.
"""
