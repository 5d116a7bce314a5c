"""The export folder's file names and its manifest check, with no dependency on torch (an ONNX
artefact loads with onnxruntime and numpy alone)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

ARCH, WEIGHTS, CONFIG, METRICS, ONNX, FLOPS, MANIFEST = (
    "arch.json", "model.safetensors", "config.yaml", "metrics.json", "model.onnx", "flops.txt",
    "manifest.json")
REQUIRED = (ARCH, WEIGHTS, METRICS)
HF_FOLDER = "hf"  # a pruned language model as a plain Hugging Face folder (save_pretrained)


def listed_name(name: str) -> bool:
    """A manifest entry names a plain file of the folder, or one inside its Hugging Face folder."""
    parts = name.split("/")
    return ("\\" not in name and all(p not in ("", ".", "..") for p in parts) and name != MANIFEST
            and (len(parts) == 1 or (len(parts) == 2 and parts[0] == HF_FOLDER)))


def files_of(folder: Path) -> list[str]:
    """The names a manifest lists for `folder`'s files (the manifest itself left out)."""
    top = [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST]
    hf = folder / HF_FOLDER
    inner = [f"{HF_FOLDER}/{p.name}" for p in hf.iterdir() if p.is_file()] if hf.is_dir() else []
    return sorted(top + inner)


class ExportError(RuntimeError):
    """An export folder (or a file in it) is missing, truncated, modified or malformed."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(folder: str | Path, files: list[str] | None = None) -> dict:
    """Check the folder against its manifest (every entry's form, and the size and sha256 of
    `files`, default all of them); returns the manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"export folder {folder} does not exist")
    if not (folder / MANIFEST).is_file():
        raise ExportError(f"{folder} is not a complete export folder: {MANIFEST} is missing "
                          f"(an export folder holds {', '.join(REQUIRED)} and {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{folder / MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ExportError(f"{folder / MANIFEST} must map file names to their size and sha256")
    for name in REQUIRED:
        if name not in manifest:
            raise ExportError(f"{folder / MANIFEST} does not list the required file {name}")
    for name, entry in manifest.items():
        if not listed_name(name):
            raise ExportError(f"{folder / MANIFEST} lists {name!r}: entries must be plain file "
                              f"names inside the export folder (or inside its {HF_FOLDER}/ folder)")
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            raise ExportError(f"{folder / MANIFEST}: the entry for {name} must be "
                              f'{{"bytes": <int>, "sha256": <hex>}}, got {entry!r}')
        path = folder / name
        if files is not None and name not in files:
            continue
        if not path.is_file():
            raise ExportError(f"{path} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ExportError(f"{path} has {size} bytes, expected {entry['bytes']}: truncated or "
                              f"replaced after export")
        if sha256(path) != entry["sha256"]:
            raise ExportError(f"{path} does not match its sha256 in {MANIFEST}: modified or "
                              f"corrupted after export")
    return manifest
