"""AWS managed keys (``alias/aws/rds``) and the policies keys are created with.

The policy documents themselves are volumed.kms.policy.policy's (``default_key_policy``,
``aws_managed_rds_policy``); this module says which aliases are AWS managed, how such a key is
described and rotated, and serialises the policies for storage. Callers: volumed.kms.ops.keys (lazy
creation when an AWS managed alias is first referenced), volumed.kms.ops.key_ops (CreateKey without
Policy). What the managed key allows is decided by its policy alone (volumed.kms.policy.authz).
"""

from __future__ import annotations

import json

from volumed.kms.policy import policy

# alias name -> description AWS gives the key
MANAGED_ALIASES = {
    "alias/aws/rds": "Default key that protects my RDS database volumes when no other key is defined",
}
MANAGED_ROTATION_DAYS = 365


def default_key_policy(account: str) -> str:
    """AWS's default key policy as stored text: the account (and so IAM policies) may do kms:*."""
    return json.dumps(policy.default_key_policy(account), indent=2)


def managed_key_policy(alias: str, account: str, region: str) -> str:
    """The policy AWS attaches to the AWS managed key behind ``alias``, as stored text."""
    assert alias in MANAGED_ALIASES, alias
    return json.dumps(policy.aws_managed_rds_policy(account, region), indent=2)
