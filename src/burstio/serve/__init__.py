"""Servers built on BurstSocket (``burstio serve ...``)."""
