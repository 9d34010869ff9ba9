"""Small files that decompress to a lot: the hostile parquet and tar inputs of issue 29, and a way to measure
ingest's peak memory on them (tests/test_ingest_limits.py and benchmarks/hostile_memory.py use both).

Every builder streams what it writes, so building a file that expands to hundreds of MiB costs little."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from user_data import png_bytes

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


class Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks (what tarfile copies a member from)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def good_items(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """n distinct small PNGs with captions."""
    return [(png_bytes((20, 20), seed=seed + i), f"picture {seed + i}") for i in range(n)]


def normal_folder(root: Path, n: int) -> Path:
    """A sidecar folder of n small images: the yardstick the hostile files are measured against."""
    root.mkdir(parents=True)
    for i, (png, text) in enumerate(good_items(n)):
        (root / f"{i:04d}.png").write_bytes(png)
        (root / f"{i:04d}.txt").write_text(text)
    return root


def dictionary_bomb_parquet(path: Path, rows: int = 64, value_bytes: int = 12 * MiB) -> None:
    """`rows` cells that are all one `value_bytes` run of zeros: one dictionary value, zstd-compressed, so
    the file is a few KiB and its cells add up to rows x value_bytes once read. No Arrow schema is stored,
    so a reader sees plain binary cells."""
    image = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([bytes(value_bytes)]))
    table = pa.table({"image": image, "text": [f"bomb {i}" for i in range(rows)]})
    pq.write_table(table, path, compression="zstd", store_schema=False)


def good_parquet(path: Path, n: int, seed: int = 0) -> None:
    items = good_items(n, seed)
    pq.write_table(pa.table({"image": [p for p, _ in items], "text": [t for _, t in items]}), path)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes | int) -> None:
    """A member of `data`'s bytes, or of that many zero bytes."""
    info = tarfile.TarInfo(name)
    info.size = data if isinstance(data, int) else len(data)
    tar.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))


def gzip_tar(path: Path, members: list[tuple[str, bytes | int]]) -> None:
    """A gzip-compressed tar (named as `path` says: `.tar` shards are read whatever their compression)."""
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name, data in members:
            _tar_member(tar, name, data)


def unused_members_tar(path: Path, junk_bytes: int = 200 * MiB) -> None:
    """One good sample (png + txt) whose key also has members no reader uses (.npy, .seg) of zeros."""
    png, text = good_items(1)[0]
    gzip_tar(path, [("a.png", png), ("a.txt", text.encode()), ("a.npy", junk_bytes), ("a.seg", 8 * MiB)])


def _raw_member(out, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.write(info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE))


def pax_bomb_tar(path: Path, header_bytes: int = 256 * MiB) -> None:
    """A good sample, then a PAX extended header of `header_bytes` (one `comment` record of x) before a
    second good sample, gzip-compressed (a few hundred KiB)."""
    (png_a, text_a), (png_b, text_b) = good_items(2)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, header_bytes
    prefix = f"{header_bytes} comment=".encode()  # a PAX record counts its own length
    with gzip.open(path, "wb", compresslevel=6) as out:
        _raw_member(out, "a.png", png_a)
        _raw_member(out, "a.txt", text_a.encode())
        out.write(header.tobuf(tarfile.USTAR_FORMAT) + prefix)
        value = header_bytes - len(prefix) - 1
        for start in range(0, value, 4 * MiB):
            out.write(b"x" * min(4 * MiB, value - start))
        out.write(b"\n" + bytes(-header_bytes % tarfile.BLOCKSIZE))
        _raw_member(out, "b.png", png_b)
        _raw_member(out, "b.txt", text_b.encode())
        out.write(bytes(2 * tarfile.BLOCKSIZE))  # the end of the archive


_MEASURE = """
import json, resource, sys
from pathlib import Path
from tasks.common.config import config_from_dict
from tasks.common.ingested import read_rejects
from tasks.ingest.stage import run_ingest
data, out = json.loads(sys.argv[1]), Path(sys.argv[2])
report = run_ingest(config_from_dict({"data": data}), out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"report": report, "rejects": read_rejects(out), "peak_mib": peak}))
"""


def ingest_peak(data: dict, out: Path) -> tuple[dict, list[dict], float]:
    """(report, rejects, peak resident set in MiB) of ingesting `data` (the data section) into `out`, in a
    process of its own: its peak is this ingest's alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(data), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"ingest of {data} exited {done.returncode}:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["report"], found["rejects"], found["peak_mib"]
