"""Watch mode: kernel file events (inotify) turned into rescans of the touched paths only.

:mod:`.inotify` holds the watches, :mod:`.touched` re-examines what they name,
:mod:`.liveroot` keeps the root with the current changes applied, and :mod:`.mode`
runs it beside the scheduled scans, which stay as the safety net.
"""
