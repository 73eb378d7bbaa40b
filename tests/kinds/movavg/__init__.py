"""A moving-average model kind: the smallest kind there is, served end to end by the tests.

It has the folder of a real kind (app/kinds/<kind>/) and plugs into the service the same way:
``MEMSERVE_EXTRA_KINDS=movavg=tests.kinds.movavg`` in every API and worker process
(docs/architecture.md, Adding a kind). A session posts values and gets back, for each, the
weighted average of the last ``window`` values up to it (fewer at the start).
"""
