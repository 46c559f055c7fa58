"""Check a downloaded file against its SHA-256; a file that does not match is deleted.

``data_scripts/fetch.sh`` calls this after every download, so the loaders in
``vfm_lab.data.real`` only ever see verified files. Standard library only.

    python data_scripts/verify.py FILE SHA256 [--rerun "bash data_scripts/fetch.sh NAME"]
    python data_scripts/verify.py --manifest DIR/MANIFEST.sha256 [--rerun ...]

exits 0 when FILE matches, 1 (with the reason and the command to rerun on stderr) when it
does not or is missing. SHA256 is hex, or a Subresource Integrity string such as npm's
``sha512-<base64>``. A manifest holds ``sha256sum`` lines (``HEX  FILE``, FILE relative to it);
a built file that does not match is reported, not deleted.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path


class ChecksumError(ValueError):
    """A file that is missing or whose SHA-256 is not the published one."""


def sha256_of(path: str | Path, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    """Hex digest (SHA-256 unless ``algorithm`` names another hashlib algorithm) of a file, read in
    ``chunk``-byte pieces."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _expected(checksum: str) -> tuple[str, str]:
    """(algorithm, lower-case hex digest) of a hex SHA-256 or an SRI string ``ALGO-BASE64``."""
    algorithm, sep, b64 = checksum.partition("-")
    if sep and algorithm in ("sha256", "sha384", "sha512"):
        return algorithm, base64.b64decode(b64).hex()
    return "sha256", checksum.lower()


def verify(path: str | Path, sha256: str, rerun: str = "bash data_scripts/fetch.sh") -> None:
    """Return quietly if ``path`` has SHA-256 ``sha256``; otherwise delete it (a partial or
    corrupt download must not be read) and raise :class:`ChecksumError` naming the file and
    the command ``rerun`` that fetches it again."""
    path = Path(path)
    if not path.is_file():
        raise ChecksumError(f"{path} is missing; fetch it with `{rerun}`")
    algorithm, expected = _expected(sha256)
    found = sha256_of(path, algorithm=algorithm)
    if found != expected:
        size = path.stat().st_size
        path.unlink()
        raise ChecksumError(f"{path} is corrupt or incomplete ({size} bytes, {algorithm} {found}, expected {sha256}); "
                            f"deleted it, fetch it again with `{rerun}`")


def verify_manifest(manifest: str | Path, rerun: str = "bash data_scripts/fetch.sh") -> None:
    """Return quietly if every file listed in ``manifest`` (``sha256sum`` format) matches; otherwise
    raise :class:`ChecksumError` naming the first that does not, and ``rerun``, which rebuilds it."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ChecksumError(f"{manifest} is missing: the build did not finish; rebuild with `{rerun}`")
    for line in manifest.read_text().splitlines():
        sha, name = line.split(maxsplit=1)
        path = manifest.parent / name
        found = sha256_of(path) if path.is_file() else "missing"
        if found != sha:
            raise ChecksumError(f"{path} is corrupt or incomplete (sha256 {found}, the manifest says {sha}); "
                                f"rebuild it with `{rerun}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?")
    parser.add_argument("sha256", nargs="?", help="hex SHA-256, or an SRI string such as sha512-BASE64")
    parser.add_argument("--manifest", help="check every file a sha256sum-style manifest lists instead")
    parser.add_argument("--rerun", default="bash data_scripts/fetch.sh", help="the command that fetches the file")
    args = parser.parse_args(argv)
    if (args.manifest is None) == (args.sha256 is None):
        parser.error("give FILE SHA256, or --manifest MANIFEST")
    try:
        if args.manifest:
            verify_manifest(args.manifest, args.rerun)
        else:
            verify(args.file, args.sha256, args.rerun)
    except ChecksumError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {args.manifest or args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
