"""The CrossGuard pack: `pulumi preview --policy-pack policy` (or `pulumi up --policy-pack policy`).

The CLI runs this file with the pack folder first on sys.path; the repository root goes in front so
that `policy` is this package, and the pack serves exactly the rules the tests run.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack  # noqa: E402

from policy.pack import ENFORCEMENT, PACK_NAME, policies  # noqa: E402

PolicyPack(name=PACK_NAME, enforcement_level=ENFORCEMENT, policies=policies())
