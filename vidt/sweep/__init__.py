"""`vidt sweep`: a grid of `vidt train` runs as Ray tasks (spec.py: the file; run.py: Ray)."""
