"""Config tests: file formats, precedence, unknown keys, invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_training_config
from training.errors import ConfigError


def test_defaults() -> None:
    cfg = load_training_config()
    assert cfg.strategy == "auto" and cfg.modality == "auto"
    assert cfg.base_model is None  # the modality's default: minilm for texts, efficientnet-lite0 for images


@pytest.mark.parametrize(
    ("name", "text"),
    [("c.yaml", "strategy: lora\nlora_r: 4\n"), ("c.toml", 'strategy = "lora"\nlora_r = 4\n')],
)
def test_yaml_and_toml_files(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    cfg = load_training_config(path)
    assert (cfg.strategy, cfg.lora_r) == ("lora", 4)


def test_precedence_overrides_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nseed: 5\nlora_r: 4\n")
    monkeypatch.setenv("REFIT_TRAIN_EPOCHS", "7")
    monkeypatch.setenv("REFIT_TRAIN_SEED", "9")
    cfg = load_training_config(path, {"seed": 11, "batch_size": None})
    assert (cfg.epochs, cfg.seed, cfg.lora_r, cfg.batch_size) == (7, 11, 4, 32)


def test_unknown_key_in_file_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("strategy: head\nlearnig_rate: 0.1\n")
    with pytest.raises(
        ConfigError,
        match=(
            r"Unknown config key\(s\) \['learnig_rate'\] in .*c\.yaml\. 'learnig_rate': did you mean "
            r"'learning_rate'\? Valid keys: .*learning_rate"
        ),
    ):
        load_training_config(path)


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"Unknown config key\(s\) \['colour'\] in the overrides\. Valid"):
        load_training_config(overrides={"colour": "blue"})


def test_invalid_value_says_what_was_found() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy \[REFIT_TRAIN_STRATEGY\]: .*'baseline', 'head'.* \(found 'magic'\)"
    ):
        load_training_config(overrides={"strategy": "magic"})


def test_invalid_ladder() -> None:
    with pytest.raises(ConfigError, match=r"auto_ladder must be a non-empty list"):
        load_training_config(overrides={"auto_ladder": ["head", "auto"]})


def test_wrong_extension_and_non_mapping(tmp_path: Path) -> None:
    ini = tmp_path / "c.ini"
    ini.write_text("x")
    with pytest.raises(ConfigError, match=r"extension '\.ini'; expected \.yaml, \.yml or \.toml"):
        load_training_config(ini)
    listing = tmp_path / "c.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping .* found list"):
        load_training_config(listing)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("oos", ["oos"]), ("oos, new_card ,", ["oos", "new_card"]), ('["a", "b"]', ["a", "b"]), ("", [])],
)
def test_a_list_setting_takes_the_plain_comma_form_from_the_environment(
    value: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.settings import load_serve_settings

    monkeypatch.setenv("REFIT_SERVE_FEEDBACK_EXTRA_LABELS", value)
    assert load_serve_settings(resolve_model=False).feedback_extra_labels == expected


def test_a_list_setting_takes_the_plain_comma_form_from_set_and_files(tmp_path: Path) -> None:
    assert load_training_config(overrides={"auto_ladder": "head, lora"}).auto_ladder == ["head", "lora"]
    config = tmp_path / "train.yaml"
    config.write_text("auto_ladder: baseline,full\n")
    assert load_training_config(config).auto_ladder == ["baseline", "full"]


def test_a_bad_value_from_the_environment_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.settings import load_serve_settings

    monkeypatch.setenv("REFIT_SERVE_WORKERS", "two")
    with pytest.raises(ConfigError) as info:
        load_serve_settings(resolve_model=False)
    assert str(info.value) == (
        "Invalid ServeSettings: workers [REFIT_SERVE_WORKERS]: Input should be a valid integer, "
        "unable to parse string as an integer (found 'two')"
    )
