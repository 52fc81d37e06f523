"""A bounded cache of indexed manifests, so evidence checks cost O(changes).

Indexing a manifest (decode, hash every entry) is O(entries); it happens once per
image while the image is in use, then every evidence check reuses the index.
"""

from __future__ import annotations

from collections import OrderedDict

from agent.manifest import decode
from controller.domain.evidence import ManifestIndex
from controller.domain.model import ImageRecord
from controller.ports import Store


class ManifestCache:
    """Least-recently-used :class:`ManifestIndex` per manifest digest."""

    def __init__(self, store: Store, *, capacity: int = 8) -> None:
        self._store = store
        self._capacity = capacity
        self._indexes: OrderedDict[str, ManifestIndex] = OrderedDict()

    def index_for(self, image: ImageRecord) -> ManifestIndex:
        """The index of ``image``'s manifest. Raises NotFoundError if it is not stored."""
        index = self._indexes.get(image.manifest_digest)
        if index is None:
            manifest = decode(self._store.get_manifest(image.manifest_digest))
            index = ManifestIndex(manifest.entries)
            self._indexes[image.manifest_digest] = index
            while len(self._indexes) > self._capacity:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(image.manifest_digest)
        return index
