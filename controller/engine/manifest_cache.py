"""A bounded cache of indexed manifests, so evidence checks cost O(changes).

Indexing a manifest (decode, hash every entry) is O(entries) — a second or more
for a hundred thousand entries; it happens once per image while the image is in
use, then every evidence check reuses the index. So that the first drift of an
image never waits for it on the report path, :meth:`ManifestCache.warm` builds
indexes in a background thread: the groups' desired images when the controller
starts, and each image when it is registered.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable

from agent.manifest.format import decode
from controller.domain.evidence import ManifestIndex
from controller.domain.model import ImageRecord
from controller.ports import Store

log = logging.getLogger("corral.controller")


class ManifestCache:
    """Least-recently-used :class:`ManifestIndex` per manifest digest."""

    def __init__(self, store: Store, *, capacity: int = 8) -> None:
        self._store = store
        self._capacity = capacity
        self._indexes: OrderedDict[str, ManifestIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}

    def index_for(self, image: ImageRecord) -> ManifestIndex:
        """The index of ``image``'s manifest. Raises NotFoundError if it is not stored.

        One caller builds a missing index; others asking meanwhile wait for it.
        """
        key = image.manifest_digest
        while True:
            with self._lock:
                index = self._indexes.get(key)
                if index is not None:
                    self._indexes.move_to_end(key)
                    return index
                building = self._building.get(key)
                if building is None:
                    building = self._building[key] = threading.Event()
                    break
            building.wait()
        try:
            index = ManifestIndex(decode(self._store.get_manifest(key)).entries)
            with self._lock:
                self._indexes[key] = index
                while len(self._indexes) > self._capacity:
                    self._indexes.popitem(last=False)
            return index
        finally:
            with self._lock:
                del self._building[key]
            building.set()

    def warm(self, images: Iterable[ImageRecord]) -> None:
        """Index ``images`` in a background thread (failures are logged, never raised)."""
        todo = list(images)[: self._capacity]
        if todo:
            threading.Thread(
                target=self._warm, args=(todo,), name="corral-manifest-warm", daemon=True
            ).start()

    def _warm(self, images: list[ImageRecord]) -> None:
        for image in images:
            try:
                self.index_for(image)
            except Exception:
                log.warning("could not index manifest %s ahead of time", image.manifest_digest)
