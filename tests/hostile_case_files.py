"""Builders of hostile case files (for tests/test_case_files.py): archives that lie about their members,
zip bombs, non-regular files and manifests that break naive JSON parsers.

Every builder writes beside an existing valid case (``path``: its manifest) so that exactly one thing is
wrong with the result.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from attnspec.conformance.harness import case_files


def manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def write_manifest(path: Path, m) -> None:
    path.write_text(json.dumps(m))


def arrays(path: Path) -> dict:
    with np.load(path.with_suffix(".npz")) as z:
        return {k: z[k] for k in z.files}


def rehash(path: Path, new_arrays: dict) -> None:
    """Rewrite the npz and make the manifest's hashes match (a consistent but hostile file)."""
    np.savez(path.with_suffix(".npz"), **new_arrays)
    m = manifest(path)
    m["arrays"] = {k: {"sha256": case_files._sha256(a), "dtype": str(a.dtype), "shape": list(a.shape)} for k, a in new_arrays.items()}
    write_manifest(path, m)


def npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    npy_format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def npz_with_extra_member(path: Path, name: str, data: bytes = b"hello") -> None:
    """The case's npz plus one more member called ``name`` (``evil.txt``, ``../x.npy``, …)."""
    with zipfile.ZipFile(path.with_suffix(".npz"), "a") as zf:
        zf.writestr(name, data)


def npz_claiming_size(path: Path, member: str, size: int) -> None:
    """The case's npz whose central directory says ``member`` decompresses to ``size`` bytes."""
    good = arrays(path)
    with zipfile.ZipFile(path.with_suffix(".npz"), "w") as zf:
        for name, a in good.items():
            zf.writestr(f"{name}.npy", npy_bytes(a))
        info = next(i for i in zf.filelist if i.filename == member)
        info.file_size = size  # written to the central directory at close (zip64 extra when > 4 GiB)


def zip_bomb(path: Path, member: str = "q.npy", nbytes: int = 50 * 2**20) -> tuple[int]:
    """Replace ``member`` with a valid .npy of ``nbytes`` zero bytes (float64), deflated to about 50 KB;
    written in chunks, so building it holds little memory. Returns the stored shape."""
    shape = (nbytes // 8,)
    good = arrays(path)
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path.with_suffix(".npz"), "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, a in good.items():
            if f"{name}.npy" != member:
                zf.writestr(f"{name}.npy", npy_bytes(a))
        with zf.open(member, "w", force_zip64=True) as f:
            npy_format.write_array_header_1_0(f, header)
            chunk = bytes(2**20)
            for _ in range(nbytes // len(chunk)):
                f.write(chunk)
    return shape


def npz_with_raw_member(path: Path, member: str, data: bytes) -> None:
    """The case's npz with ``member`` replaced by the raw bytes ``data``."""
    good = arrays(path)
    with zipfile.ZipFile(path.with_suffix(".npz"), "w") as zf:
        for name, a in good.items():
            zf.writestr(f"{name}.npy", data if f"{name}.npy" == member else npy_bytes(a))


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def manifest_with_raw_field(path: Path, field: str, raw: str) -> None:
    """The manifest with ``field`` set to the raw JSON text ``raw`` (which json.dumps could not write)."""
    m = manifest(path)
    m[field] = "__RAW__"
    path.write_text(json.dumps(m).replace('"__RAW__"', raw))
