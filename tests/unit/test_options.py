"""Options: the pool-size split, validation messages, conninfo masking."""

from __future__ import annotations

import pytest

from pgsupervisor import Manager, OptionError, PoolOptions
from pgsupervisor.options import ConnInfo, split_pool_size

DSN = "postgresql://app:hunter2@db.example:5433/appdb"


@pytest.mark.parametrize(
    ("size", "expected"),
    [(1, (1, 1)), (2, (1, 1)), (4, (1, 3)), (8, (2, 6)), (20, (4, 16)), (100, (4, 96))],
)
def test_electric_pool_split(size: int, expected: tuple[int, int]) -> None:
    assert split_pool_size(size) == expected


def test_per_pool_override() -> None:
    assert PoolOptions(size=20, admin_size=2).sizes == {"admin": 2, "snapshot": 16}
    assert Manager(DSN, pool={"size": 8, "snapshot_size": 3}).pool_sizes == {
        "admin": 2,
        "snapshot": 3,
    }


@pytest.mark.parametrize(
    ("pool", "exc", "message"),
    [
        ({"size": 0}, OptionError, "pool option 'size' must be an integer >= 1"),
        ({"size": -3}, OptionError, "'size'"),
        ({"size": 2.5}, TypeError, "pool option 'size' must be an integer"),
        ({"timeout": -1}, OptionError, "'timeout'"),
        ({"idle_interval": 0}, OptionError, "'idle_interval'"),
        ({"sise": 3}, OptionError, "unknown pool option\\(s\\) 'sise'"),
        ("big", TypeError, "pool options must be a dict"),
    ],
)
def test_bad_pool_options_name_the_option(
    pool: object, exc: type, message: str
) -> None:
    with pytest.raises(exc, match=message):
        Manager(DSN, pool=pool)  # type: ignore[arg-type]


def test_bad_manager_arguments() -> None:
    with pytest.raises(OptionError, match="stack_id"):
        Manager(DSN, stack_id="")
    with pytest.raises(OptionError, match="backoff min"):
        Manager(DSN, backoff={"min": 5, "max": 1})
    with pytest.raises(TypeError, match="conninfo must be"):
        Manager(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "host=db password hunter2",
        "postgresql://app:hun ter2@db/app",
        "host=db sslmode=bogus x=hunter2",
    ],
)
def test_malformed_dsn_error_hides_the_password(bad: str) -> None:
    with pytest.raises(OptionError, match="invalid conninfo") as info:
        Manager(bad)
    assert "hunter2" not in str(info.value)
    assert "ter2" not in str(info.value)


def test_conninfo_forms_are_equivalent_and_masked() -> None:
    uri = ConnInfo(DSN)
    kv = ConnInfo("host=db.example port=5433 user=app password=hunter2 dbname=appdb")
    mapping = ConnInfo(
        {
            "host": "db.example",
            "port": 5433,
            "user": "app",
            "password": "hunter2",
            "dbname": "appdb",
        }
    )
    assert uri.params == kv.params == mapping.params
    for info in (uri, kv, mapping):
        assert "hunter2" not in repr(info) + str(info) + info.describe()
    assert uri.describe() == "app@db.example:5433/appdb"
    assert "hunter2" in ConnInfo(DSN, show_sensitive=True).masked()


def test_manager_repr_hides_password() -> None:
    m = Manager(DSN, stack_id="s1")
    assert "hunter2" not in repr(m)
    assert "'s1'" in repr(m) and "stopped" in repr(m)
    assert "hunter2" in repr(Manager(DSN, show_sensitive_data_on_connection_error=True))
