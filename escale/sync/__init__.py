"""The parts of a sync cycle, one concern each, sharing one :class:`~escale.sync.context.Repo`.

See docs/architecture.md for the map; :mod:`escale.manager` is the façade that
opens a repository and runs its cycles.
"""
