"""OCI images as bake sources: read an archive or layout and apply its layers in memory.

- :mod:`agent.image.oci.source` finds an image's manifest, config and layer blobs in
  an ``oci-archive:``, ``oci:`` or ``docker-archive:`` source (:mod:`~agent.image.oci.blobs`
  reads them in place);
- :mod:`agent.image.oci.streams` reads a layer blob as its uncompressed tar,
  decompressing and digesting it on threads of their own;
- :mod:`agent.image.oci.tarreader` walks that tar member by member, its headers
  parsed by :mod:`agent.image.oci.tarheader` as the engines' Go unpacker parses them;
- :mod:`agent.image.oci.layers` applies each layer (whiteouts, opaque
  directories, hard links) to an in-memory tree of entries, so baking an image
  artifact gives the manifest that baking its unpacked root gives.
"""
