"""Processes the scenarios start (``python -m burstio.bench.workers.NAME``):
the far end of a measurement, doing the timed work in a process of its own."""
