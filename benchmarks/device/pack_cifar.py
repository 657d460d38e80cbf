"""Carry CIFAR-10 to a device machine: lossless WebP, about 1.6 KB per image instead of 3 KB.

What travels to a device machine is capped at 64 MiB (the repository's tracked files included), and the machine
reaches no network, so the benchmark data goes as one .npz of WebP bytes that `unpack` turns back into x/y.

  python benchmarks/device/pack_cifar.py pack ../shared/data/cifar10/train.npz 24000 .gpu/d/cifar_d.npz
  python benchmarks/device/pack_cifar.py unpack .gpu/d/cifar_d.npz /tmp/cifar24k.npz     # on the device

`pack` keeps the first N images, in order, so that `datasets.load(..., validation_fraction=0.2, seed=0)` splits the
unpacked file the same way wherever it runs; `unpack` checks nothing against the source, so check a round trip
here (`--check`) before carrying it.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
from multiprocessing import Pool

import numpy as np
from PIL import Image


def encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def pack(source: str, count: int, out: str, processes: int = 2) -> None:
    data = np.load(source)
    x, y = data["x"][:count], data["y"][:count]
    with Pool(processes) as pool:
        blobs = pool.map(encode, list(x), chunksize=500)
    np.savez(out, data=np.frombuffer(b"".join(blobs), np.uint8), lens=np.array([len(b) for b in blobs]), y=y)


def unpack(packed: str, processes: int = 16) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(packed)
    ends, raw = np.cumsum(data["lens"]), data["data"].tobytes()
    blobs = [raw[end - size:end] for end, size in zip(ends, data["lens"])]
    with Pool(processes) as pool:
        return np.stack(pool.map(decode, blobs, chunksize=500)), data["y"]


def _tracked_bytes() -> int:
    """The size of the repository's tracked files, which travel with every device call (0 outside a checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(os.path.getsize(n) for n in names if n and os.path.isfile(n))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("source")
    a.add_argument("count", type=int)
    a.add_argument("out")
    a.add_argument("--check", action="store_true", help="unpack again and compare with the source")
    b = sub.add_parser("unpack")
    b.add_argument("packed")
    b.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(args.source, args.count, args.out)
        if args.check:
            x, y = unpack(args.out, processes=2)
            source = np.load(args.source)
            if not (np.array_equal(x, source["x"][:args.count]) and np.array_equal(y, source["y"][:args.count])):
                raise SystemExit(f"{args.out}: the round trip differs from {args.source}")
        print(f"{args.out}: {args.count} images, {os.path.getsize(args.out) / 2**20:.1f} MiB; with the tracked files, "
              f"a device call carries {(os.path.getsize(args.out) + _tracked_bytes()) / 2**20:.1f} MiB of its 64 "
              "(and the wheels)")
    else:
        x, y = unpack(args.packed)
        np.savez(args.out, x=x, y=y)
        print(f"{args.out}: unpacked {len(x)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
