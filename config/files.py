"""The TOML config file: the lowest layer of settings (then the environment, then flags).

Keys are the setting names of `config.settings.Settings`, at the top level or under a
`[bulkscribe]` table. A key in the file would sit in plain text next to the config,
so the file may not hold one: it names a Prefect Secret block instead
(`api_key_secret_block = "nanogpt-key"`), or the key comes from NANOGPT_API_KEY.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

#: Read when no --config is given and the file exists in the working directory.
DEFAULT_CONFIG = "bulkscribe.toml"
#: Names a config file for processes that take no flags (workers, `serve`).
CONFIG_ENV = "BULKSCRIBE_CONFIG"

_KEY_NAMES = {"api_key", "nanogpt_api_key"}


class ConfigError(ValueError):
    """The config file cannot be used; the message says how to fix it, in one line."""


def config_path(explicit: str | None = None) -> Path | None:
    """The config file in force: --config, else $BULKSCRIBE_CONFIG, else ./bulkscribe.toml if present."""
    named = explicit or os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: fix --config / {CONFIG_ENV} or create it")
        return path
    default = Path(DEFAULT_CONFIG)
    return default if default.is_file() else None


def read_config(path: Path | None, known: set[str]) -> dict[str, Any]:
    """The settings a config file sets; unknown keys and keys in the file are errors, not ignored."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    values = data.pop("bulkscribe", {}) | data
    secret = _KEY_NAMES & set(values)
    if secret:
        raise ConfigError(f"{path} sets {sorted(secret)[0]}: an API key may not be stored in the config file; "
                          "set NANOGPT_API_KEY or name a Prefect Secret block with api_key_secret_block")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} (see README, Configuration)")
    return values
