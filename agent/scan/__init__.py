"""Scanning a tree into manifest entries, as fast and as politely as possible.

:mod:`.scanner` walks and hashes, :mod:`.rules` says what to skip, :mod:`.statcache`
keeps what an unchanged file hashed to, :mod:`.hashing` and :mod:`.hashpool` hash
content (in worker processes for big trees), :mod:`.pacing` keeps the agent nice.
"""
