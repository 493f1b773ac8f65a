"""Every setting is documented: the README's Configuration table is what `settings --markdown`
prints, so a setting added without its row (or a changed default) fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from marketplace_pay.settings import Settings, SettingsError
from marketplace_pay.settings_docs import describe

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_configuration_table_is_the_one_the_code_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "marketplace_pay.entrypoints.cli", "settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    section = README.read_text().split("## Configuration\n", 1)[1]
    assert printed.strip() in section, "regenerate the table: ./mp settings --markdown"


def test_every_setting_has_a_meaning_and_a_variable_of_its_own() -> None:
    rows = [row for _, group in describe(Settings()) for row in group]
    assert all(row.doc for row in rows)
    names = [row.env for row in rows]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MP_RETRY_BASE_MS": "soon"}, "MP_RETRY_BASE_MS must be an integer"),
        ({"MP_PSP_SCENARIO": "CHAOS"}, "MP_PSP_SCENARIO must be one of"),
        ({"MP_PSP_FEE_BPS": "10001"}, "MP_PSP_FEE_BPS must be <= 10000"),
        ({"MP_DB_POOL_MIN": "9", "MP_DB_POOL_MAX": "4"}, "MP_DB_POOL_MIN must be <= MP_DB_POOL_MAX"),
    ],
)
def test_a_value_that_cannot_be_used_names_its_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)
