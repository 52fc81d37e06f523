"""Building and checking images: bake a manifest, verify a tree, write image artifacts.

Used at image-build time (``corral bake``, ``corral verify``, ``corral image build``)
and by the local provider to unpack artifacts; never by the running agent.
"""
