"""The manifest format: entries, digest and Merkle root, diffs, policies.

The one part of the agent the controller imports: what an image contains, how it
is encoded and hashed (:mod:`.format`, :mod:`.merkle`), how two of them differ
(:mod:`.diff`), which paths count (:mod:`.policy`), and a compact index of a
baked manifest for the running agent (:mod:`.baseline`).
"""
