"""`ringlock torture`: a real cluster under seeded faults, its clients' history checked.

runner.py runs it; faults.py makes the faults (the partition through the nodes'
transport fault layer, server/faults.py); workload.py and lockworker.py are the
recording clients; checks.py the checks. See docs/RELIABILITY.md.
"""
