"""ARNs as one parsed value type, and the one rule for "does this principal entry cover the caller".

One concern: turn ``arn:partition:service:region:account:resource`` text into an ``Arn`` (or say
clearly why it is not one), and decide principal coverage the same way everywhere. Before this
module the key policy, grants, the identity-policy store and the IAM calls each matched ARNs with
their own regular expression and disagreed on the partition: a key policy naming
``arn:aws:iam::A:role/R`` was satisfied by a session ``arn:aws-cn:sts::A:assumed-role/R/S`` of a
different partition (another account altogether), while grants refused it.

The rules (docs/POLICY.md, "Principals"):

- an entry covers a caller when both are the same principal (partition, account and resource
  equal), or the caller is an assumed-role session ``arn:P:sts::A:assumed-role/R/S`` and the entry
  is its role ``arn:P:iam::A:role/[path/]R`` (same partition, same account, same role name);
- an account entry ``arn:P:iam::A:root`` delegates to the caller's identity policies only for a
  caller of the same partition and account (``account_covers``);
- anything that is not an ARN (a service principal such as ``rds.amazonaws.com``) covers only
  itself, by string equality.

Callers: volumed.kms.policy.policy (principal elements, aws:PrincipalArn), volumed.kms.policy.grants (grantee
and retiring principals), volumed.kms.store.iamstore (whose policies apply to a caller), volumed.kms.ops.iam_ops
(attachment targets, the root), volumed.kms.policy.authz, volumed.kms.audit (userIdentity).
"""

from __future__ import annotations

import dataclasses
import re

from volumed.errors import VolumedError

_PARTITION_RE = re.compile(r"^aws(?:-[a-z]+)*$")  # aws, aws-cn, aws-us-gov, aws-iso-b, ...
_SERVICE_RE = re.compile(r"^[a-z0-9-]+$")
_REGION_RE = re.compile(r"^(?:[a-z0-9-]+)?$")
_ACCOUNT_RE = re.compile(r"^(?:\d{12})?$")
KEYSTORE_PARTITION = "aws"  # every keystore's keys, account and principals are in this partition
MAX_ARN_LENGTH = 2048  # AWS's limit for an ARN in a request (e.g. a principal ARN)


class InvalidArn(VolumedError, ValueError):
    """Text that is not a well-formed ARN. Reported as ValidationException where a request
    carried it."""

    exit_code = 2
    code = "ValidationException"


@dataclasses.dataclass(frozen=True)
class Arn:
    """``arn:<partition>:<service>:<region>:<account>:<resource>``. Immutable and hashable; ``str``
    gives the text back exactly."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, text: object) -> "Arn":
        """Parse ``text``; InvalidArn naming the part at fault."""
        if not isinstance(text, str):
            raise InvalidArn(f"an ARN must be a string, not {type(text).__name__}")
        if len(text) > MAX_ARN_LENGTH:
            raise InvalidArn(f"ARN is {len(text)} characters; the limit is {MAX_ARN_LENGTH}")
        parts = text.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            raise InvalidArn(f"{text!r} is not an ARN (expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)")
        _, partition, service, region, account, resource = parts
        for value, rx, what in ((partition, _PARTITION_RE, "partition (aws, aws-cn, aws-us-gov, ...)"),
                                (service, _SERVICE_RE, "service"), (region, _REGION_RE, "region"),
                                (account, _ACCOUNT_RE, "account (12 digits)")):
            if not rx.fullmatch(value):
                raise InvalidArn(f"{text!r} is not an ARN: {value!r} is not a valid {what}")
        if not resource:
            raise InvalidArn(f"{text!r} is not an ARN: the resource part is empty")
        return cls(partition, service, region, account, resource)

    @classmethod
    def try_parse(cls, text: object) -> "Arn | None":
        """``parse`` that returns None for anything that is not an ARN."""
        try:
            return cls.parse(text)
        except InvalidArn:
            return None

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"

    # -- IAM and STS principals --------------------------------------------------------------------
    @property
    def is_root(self) -> bool:
        """``arn:P:iam::A:root``: the account principal."""
        return self.service == "iam" and self.resource == "root" and bool(self.account)

    def _typed(self, service: str, kind: str) -> str | None:
        """The resource after ``kind/`` for an ARN of ``service``, else None."""
        if self.service == service and self.resource.startswith(kind + "/") and len(self.resource) > len(kind) + 1:
            return self.resource[len(kind) + 1:]
        return None

    @property
    def role_name(self) -> str | None:
        """R of an IAM role ``arn:P:iam::A:role/[path/]R`` (path ignored), else None."""
        rest = self._typed("iam", "role")
        return rest.rsplit("/", 1)[-1] if rest else None

    @property
    def user_name(self) -> str | None:
        """N of an IAM user ``arn:P:iam::A:user/[path/]N``, else None."""
        rest = self._typed("iam", "user")
        return rest.rsplit("/", 1)[-1] if rest else None

    @property
    def session(self) -> tuple[str, str] | None:
        """(role name, session name) of an assumed-role session ``arn:P:sts::A:assumed-role/R/S``."""
        rest = self._typed("sts", "assumed-role")
        if not rest or "/" not in rest:
            return None
        role, name = rest.split("/", 1)
        return (role, name) if role and name else None

    def session_role(self) -> "Arn | None":
        """The role ARN (no path) an assumed-role session belongs to, same partition and account."""
        s = self.session
        if s is None:
            return None
        return Arn(self.partition, "iam", "", self.account, f"role/{s[0]}")

    @property
    def is_principal(self) -> bool:
        """An IAM or STS principal a policy may name: root, user, role, federated user, session."""
        if not self.account or self.region:
            return False
        if self.service == "iam":
            return self.is_root or any(self._typed("iam", k) for k in ("user", "role", "federated-user"))
        if self.service == "sts":
            return self.session is not None or self._typed("sts", "federated-user") is not None
        return False

    def same_account(self, other: "Arn") -> bool:
        """Same partition and same account: ``123456789012`` in aws-cn is not the one in aws."""
        return self.partition == other.partition and self.account == other.account

    @staticmethod
    def root(partition: str, account: str) -> "Arn":
        """The account principal ``arn:<partition>:iam::<account>:root``."""
        return Arn(partition, "iam", "", account, "root")


def _as_arn(value: object) -> "Arn | None":
    return value if isinstance(value, Arn) else Arn.try_parse(value)


def principal_key(caller: object) -> str:
    """The caller as a policy sees it in aws:PrincipalArn: an assumed-role session counts as its
    role; anything else as itself."""
    a = _as_arn(caller)
    role = a.session_role() if a else None
    return str(role) if role else str(caller)


def covers(entry: object, caller: object) -> bool:
    """Whether a principal ``entry`` (of a key policy, a grant's grantee or retiring principal)
    names ``caller``: the same principal, or the caller is an assumed-role session of the role
    ``entry`` names (same partition, account and role name, any path). See the module doc."""
    if str(entry) == str(caller):
        return True
    e, c = _as_arn(entry), _as_arn(caller)
    if e is None or c is None:
        return False
    if e == c:
        return True
    s = c.session
    return bool(s and e.role_name is not None and e.same_account(c) and e.role_name == s[0])


def account_covers(entry: object, caller: object) -> bool:
    """Whether ``entry`` is the root of the caller's account (same partition and account): a key
    policy statement naming it enables the caller's identity policies."""
    e, c = _as_arn(entry), _as_arn(caller)
    return bool(e and c and e.is_root and c.is_principal and e.same_account(c))


def account_of(principal: object) -> str | None:
    """The 12-digit account of an IAM/STS principal ARN (or a bare account id), else None."""
    if isinstance(principal, str) and re.fullmatch(r"\d{12}", principal):
        return principal
    a = _as_arn(principal)
    return a.account if a and a.service in ("iam", "sts") and a.account else None


def partition_of(principal: object) -> str | None:
    """The partition of a principal ARN, else None."""
    a = _as_arn(principal)
    return a.partition if a else None


def is_account_root(principal: object) -> bool:
    """Whether ``principal`` is an account principal ``arn:P:iam::A:root`` (any partition)."""
    a = _as_arn(principal)
    return bool(a and a.is_root)


def is_root_of(caller: object, account: str, partition: str = KEYSTORE_PARTITION) -> bool:
    """Whether ``caller`` is the root of ``account`` in ``partition`` (the keystore's account)."""
    a = _as_arn(caller)
    return bool(a and a == Arn.root(partition, account))
