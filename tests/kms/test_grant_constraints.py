"""Grant semantics: operations honoured, each constraint enforced (keys case-insensitive, values
case-sensitive), constraints ignored where AWS ignores them, validation, and the rule that a grant
with CreateGrant can only create grants as strict or stricter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volumed.errors import UsageError
from volumed.kms.policy import grants as G
from volumed.kms.values import Grant

VOL = {"aws:ebs:id": "vol-1"}
CTX = {"aws:rds:db-id": "db-1", "aws:ebs:id": "vol-1"}


def grant(ops, subset=None, equals=None, GranteePrincipal="host", GrantId="g"):
    constraints = {}
    if subset is not None:
        constraints["EncryptionContextSubset"] = subset
    if equals is not None:
        constraints["EncryptionContextEquals"] = equals
    return Grant(key_arn="k", grant_id=GrantId, created=0.0, grantee=GranteePrincipal,
                 issuing_account="a", operations=tuple(ops), constraints=constraints or None)


def test_grant_allows_only_its_operations():
    g = grant(["Decrypt", "DescribeKey"])
    assert G.grant_allows(g, "Decrypt", None)
    assert G.grant_allows(g, "kms:Decrypt", CTX)
    assert G.grant_allows(g, "DescribeKey", None)
    assert not G.grant_allows(g, "Encrypt", None)
    assert not G.grant_allows(g, "CreateGrant", None)
    assert not G.grant_allows(grant([]), "Decrypt", None)


def test_subset_constraint():
    g = grant(["Decrypt", "GenerateDataKey"], subset=VOL)
    assert G.grant_allows(g, "Decrypt", VOL)
    assert G.grant_allows(g, "Decrypt", CTX)  # extra pairs are fine
    assert G.grant_allows(g, "GenerateDataKey", {"AWS:EBS:ID": "vol-1"})  # keys case-insensitive
    assert not G.grant_allows(g, "Decrypt", {"aws:ebs:id": "VOL-1"})  # values case-sensitive
    assert not G.grant_allows(g, "Decrypt", {"aws:ebs:id": "vol-2"})
    assert not G.grant_allows(g, "Decrypt", {"aws:rds:db-id": "db-1"})
    assert not G.grant_allows(g, "Decrypt", {})
    assert not G.grant_allows(g, "Decrypt", None)


def test_equals_constraint():
    g = grant(["Decrypt"], equals=CTX)
    assert G.grant_allows(g, "Decrypt", dict(reversed(list(CTX.items()))))
    assert G.grant_allows(g, "Decrypt", {"AWS:RDS:DB-ID": "db-1", "aws:EBS:id": "vol-1"})
    assert not G.grant_allows(g, "Decrypt", VOL)  # missing a pair
    assert not G.grant_allows(g, "Decrypt", {**CTX, "x": "y"})  # an extra pair
    assert not G.grant_allows(g, "Decrypt", {"aws:rds:db-id": "DB-1", "aws:ebs:id": "vol-1"})
    assert not G.grant_allows(g, "Decrypt", None)


def test_both_constraints_must_hold():
    g = grant(["Decrypt"], subset=VOL, equals=CTX)
    assert G.grant_allows(g, "Decrypt", CTX)
    assert not G.grant_allows(g, "Decrypt", VOL)


def test_empty_constraint_maps_count_as_none():
    assert G.grant_allows(grant(["Decrypt"], subset={}), "Decrypt", None)
    assert G.grant_allows(grant(["Decrypt"], equals={}), "Decrypt", CTX)
    assert G.validate_constraints({"EncryptionContextSubset": {}}) is None


@pytest.mark.parametrize("op", ["DescribeKey", "RetireGrant", "CreateGrant"])
def test_constraints_ignored_for_operations_without_a_context(op):
    g = grant([op, "Decrypt"], subset=VOL)
    assert G.grant_allows(g, op, None)
    assert G.grant_allows(g, op, {"aws:ebs:id": "other"})
    assert not G.grant_allows(g, "Decrypt", None)


@pytest.mark.parametrize("op", sorted(G.CONTEXT_OPERATIONS))
def test_constraints_apply_to_every_context_operation(op):
    g = grant([op], equals=VOL)
    assert G.grant_allows(g, op, VOL)
    assert not G.grant_allows(g, op, CTX)


def test_validate_operations():
    assert G.validate_operations(["Decrypt", "CreateGrant"]) == ["Decrypt", "CreateGrant"]
    with pytest.raises(UsageError, match="'Deecrypt' is not a grant operation"):
        G.validate_operations(["Deecrypt"])
    with pytest.raises(UsageError, match="non-empty"):
        G.validate_operations([])
    with pytest.raises(UsageError, match="repeat"):
        G.validate_operations(["Decrypt", "Decrypt"])


@pytest.mark.parametrize("constraints, fragment", [
    ("x", "must be an object"),
    ({"EncryptionContextLike": {}}, "unknown constraint 'EncryptionContextLike'"),
    ({"EncryptionContextSubset": ["a"]}, "map of strings"),
    ({"EncryptionContextSubset": {"a": 1}}, "map non-empty strings to strings"),
    ({"EncryptionContextSubset": {"": "x"}}, "map non-empty strings to strings"),
    ({"EncryptionContextEquals": {str(i): "v" for i in range(9)}}, "limit is 8"),
    ({"EncryptionContextEquals": {"a": "v" * 385}}, "longer than 384"),
    ({"EncryptionContextEquals": {"a": "1", "A": "2"}}, "differ only by case"),
])
def test_validate_constraints_rejects(constraints, fragment):
    with pytest.raises(UsageError, match=fragment) as exc:
        G.validate_constraints(constraints)
    assert exc.value.code == "ValidationException"


def test_validate_constraints_normalises():
    assert G.validate_constraints(None) is None
    assert G.validate_constraints({"EncryptionContextSubset": VOL, "EncryptionContextEquals": None}) == {
        "EncryptionContextSubset": VOL}


# ------------------------------------------------------------------------------------------------
# CreateGrant through a grant: as strict or stricter


def test_child_operations_must_be_a_subset():
    parent = grant(["CreateGrant", "Decrypt", "DescribeKey"])
    assert G.is_as_strict(parent, grant(["Decrypt"]))
    assert G.is_as_strict(parent, grant(["Decrypt", "CreateGrant"]))
    assert not G.is_as_strict(parent, grant(["Decrypt", "Encrypt"]))


@pytest.mark.parametrize("parent, child, ok", [
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], subset=VOL), True),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], subset={"AWS:EBS:ID": "vol-1"}), True),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], subset=CTX), True),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], equals=CTX), True),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"]), False),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], subset={"aws:rds:db-id": "db-1"}), False),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], subset={"aws:ebs:id": "VOL-1"}), False),
    (grant(["Decrypt"], subset=VOL), grant(["Decrypt"], equals={"aws:rds:db-id": "db-1"}), False),
    (grant(["Decrypt"], equals=CTX), grant(["Decrypt"], equals=CTX), True),
    (grant(["Decrypt"], equals=CTX), grant(["Decrypt"], subset=CTX), False),
    (grant(["Decrypt"], equals=CTX), grant(["Decrypt"], equals=VOL), False),
    (grant(["Decrypt"], equals=CTX), grant(["Decrypt"]), False),
    (grant(["Decrypt"]), grant(["Decrypt"], subset=VOL), True),
    (grant(["Decrypt"]), grant(["Decrypt"]), True),
    # A child whose own constraints contradict each other allows nothing: trivially as strict.
    (grant(["Decrypt"], equals=CTX), grant(["Decrypt"], equals=VOL, subset={"x": "y"}), True),
])
def test_child_constraints_as_strict(parent, child, ok):
    assert G.is_as_strict(parent, child) is ok


# Property: is_as_strict means "every context the child accepts, the parent accepts".
_VALS = ["1", "2"]
_pairs = st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(_VALS), max_size=2)
_maybe = st.one_of(st.none(), _pairs)
_context = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(_VALS), max_size=3)


@settings(max_examples=400, deadline=None)
@given(_maybe, _maybe, _maybe, _maybe, st.lists(_context, min_size=20, max_size=20))
def test_as_strict_implies_no_context_escapes_the_parent(p_sub, p_eq, c_sub, c_eq, contexts):
    parent = grant(["Decrypt"], subset=p_sub, equals=p_eq)
    child = grant(["Decrypt"], subset=c_sub, equals=c_eq)
    # Every context that could tell them apart: the constraint maps themselves and random ones.
    probes = contexts + [m for m in (p_sub, p_eq, c_sub, c_eq) if m is not None]
    if G.is_as_strict(parent, child):
        for ctx in probes:
            if G.grant_allows(child, "Decrypt", ctx):
                assert G.grant_allows(parent, "Decrypt", ctx), ctx
    else:
        # Not as strict: some context the child accepts must escape the parent.
        witnesses = probes + [{**(c_eq or c_sub or {}), "c": "9"}]
        assert any(G.grant_allows(child, "Decrypt", c) and not G.grant_allows(parent, "Decrypt", c)
                   for c in witnesses)


def test_grantee_matching_and_the_allowing_grant():
    host = "arn:aws:sts::111122223333:assumed-role/volumed-host/node1"
    role = "arn:aws:iam::111122223333:role/volumed-host"
    assert G.grantee_matches(host, host)
    assert G.grantee_matches(role, host)
    assert G.grantee_matches("arn:aws:iam::111122223333:role/svc/volumed-host", host)
    assert not G.grantee_matches("arn:aws:iam::444455556666:role/volumed-host", host)
    assert not G.grantee_matches("arn:aws:iam::111122223333:user/alice", host)
    gs = [grant(["Decrypt"], subset={"aws:ebs:id": "vol-2"}, GranteePrincipal=role),
          grant(["Decrypt"], subset=VOL, GranteePrincipal=host, GrantId="g2"),
          grant(["Encrypt"], GranteePrincipal="arn:aws:iam::111122223333:user/alice")]
    assert G.allowing_grant(gs, host, "Decrypt", CTX).grant_id == "g2"
    assert G.allowing_grant(gs, host, "Decrypt", {"aws:ebs:id": "vol-2"}) is gs[0]
    assert G.allowing_grant(gs, host, "Decrypt", {"aws:ebs:id": "vol-3"}) is None
    assert G.allowing_grant(gs, host, "Encrypt", VOL) is None
    assert G.allowing_grant([], host, "Decrypt", VOL) is None
