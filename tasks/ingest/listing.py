"""What a user's source holds, summed up in one small file that DVC can see: the dependency that makes
ingest stale when images arrive (or change, or go).

DVC hashes the files of the project; a user's source usually lies outside it (a folder elsewhere, an S3
prefix). `data/source_listing.json` sums the source up: its file count and one digest of every file's
name and stamp (size and change times, or the object's ETag: see `file_stamp`). `ldmflow run`
(scheduled runs too) writes it before asking DVC what is stale, ingest writes the listing of the source
it read, and `ldmflow scan` writes it before a `dvc repro`. The file changes only when the source does, so an
unchanged source leaves ingest up to date. The synthetic set is its params: its listing never changes.

A copy of the same files with new mtimes (a fresh checkout of a data repo, say) makes ingest run again;
it then decodes nothing it decoded before (see PreviousIngest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.common.config import DataConfig
from tasks.ingest.source_roots import Root, open_root

_json_string = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (ensure_ascii)


def source_listing(data: DataConfig, root: Root | None = None) -> dict:
    """The listing of `data`'s source; `root`: the source's root already opened (ingest lists it once)."""
    if data.source == "synthetic":
        return {"source": "synthetic"}
    root = root or open_root(data.path, data.endpoint_url)
    # one line per file, as json.dumps([name, stamp]) writes it (built here with json's own string encoder:
    # calling json.dumps for each of tens of thousands of files costs a fifth of a nightly ingest)
    lines = [
        f"[{_json_string(name)}, {_json_string(stamp)}]\n"
        for name, stamp in sorted(root.stamps().items())
        if root.only is None or name == root.only
    ]
    digest = hashlib.sha256("".join(lines).encode())
    return {"source": data.source, "files": len(lines), "sha256": digest.hexdigest()}


def write_listing(data: DataConfig, path: Path, root: Root | None = None) -> bool:
    """Write the source's listing to `path` unless it already says the same; True when it changed."""
    text = json.dumps(source_listing(data, root), indent=2) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True
