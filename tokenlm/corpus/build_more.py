"""Builders of the sounds, synthetic speech and mixture parts (see ``corpus.build``)."""

from __future__ import annotations

PART_BUILDERS: dict = {}
