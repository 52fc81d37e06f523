"""The running agent: settings, schedule, scans, reports, the outbox and the transport.

:mod:`.cli` is ``corral-agent``; :mod:`.runner` scans and reports; the outbox
(:mod:`.outbox`, :mod:`.outbox_file`) keeps what the controller has not answered;
only :mod:`.transport` speaks gRPC.
"""
