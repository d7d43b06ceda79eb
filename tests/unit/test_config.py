"""Settings: the minimum number of frames per master (--min-inputs, PYLCOGT_MIN_INPUTS)."""

from __future__ import annotations

import pytest

from pylcogt.config import (
    DEFAULT_MIN_INPUTS,
    MIN_INPUTS_ENV,
    format_min_inputs,
    load_settings,
    parse_min_inputs,
)
from pylcogt.errors import ConfigurationError


def test_parse_min_inputs_forms() -> None:
    assert parse_min_inputs("BIAS=3,DARK=3,SKYFLAT=3") == {"BIAS": 3, "DARK": 3, "SKYFLAT": 3}
    assert parse_min_inputs(" bias=2 , flat=4") == {"BIAS": 2, "SKYFLAT": 4}
    assert parse_min_inputs("3") == dict.fromkeys(DEFAULT_MIN_INPUTS, 3)
    assert parse_min_inputs("") == {}
    assert format_min_inputs(parse_min_inputs("skyflat=4,bias=2")) == "BIAS=2,SKYFLAT=4"


@pytest.mark.parametrize("text", ["BIAS", "BIAS=0", "BIAS=x", "SCIENCE=3", "3,4", "BIAS=-1"])
def test_parse_min_inputs_refuses_with_advice(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--min-inputs"):
        parse_min_inputs(text)


def test_min_inputs_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIN_INPUTS_ENV, raising=False)
    plain = load_settings("sqlite://", "/tmp")
    assert [plain.min_inputs_for(t) for t in ("BIAS", "DARK", "SKYFLAT")] == [5, 3, 3]
    monkeypatch.setenv(MIN_INPUTS_ENV, "BIAS=3")
    env = load_settings("sqlite://", "/tmp")
    assert env.min_inputs_for("BIAS") == 3 and env.min_inputs_for("DARK") == 3
    option = load_settings("sqlite://", "/tmp", min_inputs="BIAS=4,DARK=2")  # beats the env
    assert option.min_inputs_for("BIAS") == 4 and option.min_inputs_for("DARK") == 2
    # an instrument's own value wins for the types it names
    assert option.min_inputs_for("BIAS", "BIAS=2") == 2
    assert option.min_inputs_for("DARK", "BIAS=2") == 2
    monkeypatch.setenv(MIN_INPUTS_ENV, "BIAS=none")
    with pytest.raises(ConfigurationError, match=MIN_INPUTS_ENV):
        load_settings("sqlite://", "/tmp")
