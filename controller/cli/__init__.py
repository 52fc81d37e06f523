"""The ``corral`` and ``corral-controller`` command lines."""
