"""Config loading: the shipped files validate; mistakes stop with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import (
    DEFAULT_CONFIG,
    AppConfig,
    ConfigError,
    Secrets,
    load_config,
    load_models,
)


def test_shipped_files_validate() -> None:
    cfg = load_config()
    models = load_models()
    assert cfg.data.base_timeframe == "1m"
    assert cfg.execution.live is False
    assert set(models.experts) >= {"cnn", "transformer", "dqn", "kronos"}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_misspelt_key_names_path_and_allowed(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG.read_text().replace("  exchange: binanceus", "  exchnage: binanceus")
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "data.exchnage" in msg and "unknown key" in msg and "exchange" in msg


@pytest.mark.parametrize("text, key", [("data:\n  reference_symbol: BTC/USDT\n", "data.reference_symbol"),
                                       ("execution:\n  quote_currency: USDT\n", "execution.quote_currency")])
def test_removed_keys_say_no_longer_used(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    msg = str(exc.value)
    assert "\n" not in msg and f"'{key}' is no longer used" in msg and "remove it" in msg


def test_bad_value_names_value_and_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "risk:\n  stop_loss_pct: -0.5\n"))
    msg = str(exc.value)
    assert "risk.stop_loss_pct" in msg and "-0.5" in msg and "greater than or equal to 0" in msg


def test_bad_timeframe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.base_timeframe.*'7m'.*1m"):
        load_config(_write(tmp_path, "data:\n  base_timeframe: 7m\n"))


def test_timeframe_not_multiple_of_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a multiple"):
        load_config(_write(tmp_path, "data:\n  base_timeframe: 1h\n  timeframes: [1h, 1m]\n"))


def test_unknown_expert_key(tmp_path: Path) -> None:
    p = tmp_path / "models.yml"
    p.write_text("experts:\n  cnn:\n    class: x.Y\n    horizn: 5\n")
    with pytest.raises(ConfigError, match=r"experts.cnn.horizn"):
        load_models(p)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "data: [unclosed\n"))
    assert "\n" not in str(exc.value)


def test_secrets_only_from_env_and_masked() -> None:
    s = Secrets.from_env({"MOE_EXCHANGE_API_KEY": "k-123", "MOE_EXCHANGE_SECRET": "s-456",
                          "DASHBOARD_TOKEN": "tok-789"})
    assert s.has_exchange_keys and s.dashboard_token == "tok-789"
    for text in (repr(s), str(s)):
        assert "k-123" not in text and "s-456" not in text and "tok-789" not in text
    assert "api_key" not in AppConfig.model_fields  # nothing secret in the config schema
