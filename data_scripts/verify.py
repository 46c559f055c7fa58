"""Check a downloaded file against its SHA-256; a file that does not match is deleted.

``data_scripts/fetch.sh`` calls this after every download, so the loaders in
``vfm_lab.data.real`` only ever see verified files. Standard library only.

    python data_scripts/verify.py FILE SHA256 [--rerun "bash data_scripts/fetch.sh NAME"]

exits 0 when FILE matches, 1 (with the reason and the command to rerun on stderr) when it
does not or is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


class ChecksumError(ValueError):
    """A file that is missing or whose SHA-256 is not the published one."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | Path, sha256: str, rerun: str = "bash data_scripts/fetch.sh") -> None:
    """Return quietly if ``path`` has SHA-256 ``sha256``; otherwise delete it (a partial or
    corrupt download must not be read) and raise :class:`ChecksumError` naming the file and
    the command ``rerun`` that fetches it again."""
    path = Path(path)
    if not path.is_file():
        raise ChecksumError(f"{path} is missing; fetch it with `{rerun}`")
    found = sha256_of(path)
    if found != sha256.lower():
        size = path.stat().st_size
        path.unlink()
        raise ChecksumError(f"{path} is corrupt or incomplete ({size} bytes, sha256 {found}, expected {sha256}); "
                            f"deleted it, fetch it again with `{rerun}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("sha256")
    parser.add_argument("--rerun", default="bash data_scripts/fetch.sh", help="the command that fetches the file")
    args = parser.parse_args(argv)
    try:
        verify(args.file, args.sha256, args.rerun)
    except ChecksumError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
