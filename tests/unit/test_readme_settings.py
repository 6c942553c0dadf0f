"""README's configuration table is generated from Settings; they must agree."""

from __future__ import annotations

from service.settings_doc import END, README, START, settings_table


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text()
    assert START in text and END in text, "README.md lacks the settings markers"
    current = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == settings_table(), "run: python -m service.settings_doc --write"


def test_every_setting_has_a_description() -> None:
    missing = [row for row in settings_table().splitlines()[2:] if row.rstrip().endswith("|  |")]
    assert not missing, missing
