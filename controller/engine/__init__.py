"""Where decisions take effect: reports, operator calls, the replacement engine, the loops.

Each module reads the store, asks the pure core (:mod:`controller.domain`) what to
do, and writes the result as a compare-and-set: :mod:`.reports` (agent reports and
the staleness sweep), :mod:`.groups` (rollout, rollback, resume), :mod:`.replacer`
and :mod:`.effects` (the replacement engine), :mod:`.scheduler` and
:mod:`.liveness` (the supervised background loops).
"""
