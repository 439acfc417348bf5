"""Tests of triorelay.compat.hypercorn, one module per module."""
