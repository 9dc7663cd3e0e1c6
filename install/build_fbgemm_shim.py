"""Build a metadata-only wheel named ``fbgemm-gpu`` that depends on ``fbgemm-gpu-cpu``.

torchrec declares the CUDA package ``fbgemm-gpu``; on a CPU-only machine installing it would
overwrite the ``fbgemm_gpu/`` folder of ``fbgemm-gpu-cpu`` with CUDA libraries that cannot load.
This wheel satisfies that requirement with the CPU build instead. It contains no code, only
``*.dist-info`` metadata, and is used only by the CPU install path (``make setup``).

Usage: ``python install/build_fbgemm_shim.py OUT_DIR`` (prints the wheel path).
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

FBGEMM_CPU_VERSION = "1.8.0"
SHIM_VERSION = f"{FBGEMM_CPU_VERSION}+cpu"
DIST_INFO = f"fbgemm_gpu-{SHIM_VERSION}.dist-info"

FILES = {
    f"{DIST_INFO}/METADATA": (
        "Metadata-Version: 2.1\n"
        "Name: fbgemm-gpu\n"
        f"Version: {SHIM_VERSION}\n"
        "Summary: Stands in for the CUDA fbgemm-gpu on CPU machines; pulls fbgemm-gpu-cpu.\n"
        f"Requires-Dist: fbgemm-gpu-cpu=={FBGEMM_CPU_VERSION}\n"
    ),
    f"{DIST_INFO}/WHEEL": ("Wheel-Version: 1.0\nGenerator: torchrec-mdr\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
}


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"fbgemm_gpu-{SHIM_VERSION}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in FILES.items():
            data = text.encode()
            archive.writestr(name, data)
            records.append(_record_line(name, data))
        records.append(f"{DIST_INFO}/RECORD,,")
        archive.writestr(f"{DIST_INFO}/RECORD", "\n".join(records) + "\n")
    return wheel


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_fbgemm_shim.py OUT_DIR")
    print(build(Path(sys.argv[1])))
