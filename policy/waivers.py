"""Named exceptions to the rules: (rule, resource type, name pattern, reason), kept in code and reviewed.

A waiver is for a rule that cannot or need not hold on a specific resource; the reason says which and
why. Every waiver must match a resource of some stack's graph (tests/policy/test_stacks.py fails on
a stale one), so this list shrinks when the reason goes away.
"""

from __future__ import annotations

from policy._model import Waiver

WAIVERS: tuple[Waiver, ...] = ()
