"""Hints printed by the CLI carry the -c FILE the command was run with."""

from __future__ import annotations

import pytest

from garagekv.cli import hints


@pytest.fixture(autouse=True)
def reset():
    yield
    hints.use_config(None)


def test_hints_gain_the_config_path():
    hints.use_config("node 1.toml")
    text = "To enact: garagekv layout apply --version 2\nor `garagekv repair --yes tables`; garagekv dev stays"
    assert hints.with_config(text) == (
        "To enact: garagekv -c 'node 1.toml' layout apply --version 2\n"
        "or `garagekv -c 'node 1.toml' repair --yes tables`; garagekv dev stays"
    )


def test_without_a_config_flag_nothing_changes():
    hints.use_config(None)
    assert hints.with_config("garagekv layout show") == "garagekv layout show"
