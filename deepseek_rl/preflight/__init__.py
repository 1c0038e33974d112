"""The preflight check: will a recipe fit this launch and hardware, answered before any weight loads (check.py),
with its memory model (memory.py), its problems and their fixes (problems.py) and printed report (report.py)."""
