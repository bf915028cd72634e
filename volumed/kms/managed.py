"""AWS managed keys (``alias/aws/rds``, ``alias/aws/ebs``) and the default key policies.

Callers: volumed.kms.keys (lazy creation when an AWS managed alias is first referenced),
volumed.kms.ops_keys (CreateKey without Policy), the authorization placeholder in
volumed.kms.service (which actions a user may call directly on an AWS managed key).
"""

from __future__ import annotations

import json

from volumed.kms.principals import root_arn

# alias name -> (service prefix of kms:ViaService, description AWS gives the key)
MANAGED_ALIASES = {
    "alias/aws/rds": ("rds", "Default key that protects my RDS database volumes when no other key is defined"),
    "alias/aws/ebs": ("ec2", "Default key that protects my EBS volumes when no other key is defined"),
}
MANAGED_ROTATION_DAYS = 365

# Actions the AWS managed key policy allows (the first statement only through the service).
MANAGED_USE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                       "kms:CreateGrant", "kms:ListGrants", "kms:DescribeKey")
MANAGED_DIRECT_ACTIONS = ("kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant")


def default_key_policy(account: str) -> str:
    """AWS's default key policy: the account (and so IAM policies) may do everything."""
    return json.dumps({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": root_arn(account)},
            "Action": "kms:*",
            "Resource": "*",
        }],
    }, indent=2)


def managed_key_policy(alias: str, account: str, region: str) -> str:
    """The policy AWS attaches to an AWS managed key: use only through the service by principals
    of the account; Describe/Get/List and RevokeGrant directly."""
    service = MANAGED_ALIASES[alias][0]
    return json.dumps({
        "Version": "2012-10-17",
        "Id": f"auto-{service}-2",
        "Statement": [
            {
                "Sid": "Allow access through the service for all principals in the account that are authorized to use it",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": list(MANAGED_USE_ACTIONS),
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:CallerAccount": account,
                                               "kms:ViaService": f"{service}.{region}.amazonaws.com"}},
            },
            {
                "Sid": "Allow direct access to key metadata to the account",
                "Effect": "Allow",
                "Principal": {"AWS": root_arn(account)},
                "Action": list(MANAGED_DIRECT_ACTIONS),
                "Resource": "*",
            },
        ],
    }, indent=2)


def allowed_on_managed_key(action: str) -> bool:
    """Whether the AWS managed key policy allows ``action`` at all (ignoring its conditions)."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(action, pat) for pat in MANAGED_USE_ACTIONS + MANAGED_DIRECT_ACTIONS) \
        or action == "kms:RetireGrant"
