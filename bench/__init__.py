"""The contacts-streams benchmark: the service end to end on a real broker (`python -m bench`).

Every figure is paired with a baseline measured in the same run on the same machine; results go
to `bench/results.json` and `bench/RESULTS.md`. See `bench/run.py` for what is measured and how.
"""
