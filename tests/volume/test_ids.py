import pytest

from volumed.errors import UsageError
from volumed.volume import ids


def test_generated_ids_have_aws_shapes():
    for _ in range(50):
        assert ids.is_db_id(ids.new_db_id())
        assert ids.is_ebs_id(ids.new_ebs_id())
    assert len(ids.new_db_id()) == 3 + 26
    assert len(ids.new_ebs_id()) == 4 + 17


@pytest.mark.parametrize("bad", ["db-abc", "db-" + "a" * 26, "vol-1", "x", ""])
def test_validators_refuse_wrong_shapes(bad):
    with pytest.raises(UsageError):
        ids.validate_db_id(bad) if bad.startswith("db") else ids.validate_ebs_id(bad)
