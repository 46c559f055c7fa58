"""Real icons with real text: Noto Color Emoji, OpenMoji and OpenClipart as image-caption pairs.

Three sets of drawings that come with human-written names, for language supervision (CLIP,
chapter 02) and zero-shot classification on categories never seen in training:

- ``emoji``: every fully-qualified emoji of Unicode's ``emoji-test.txt`` (Debian ``unicode-data``)
  drawn by the Noto Color Emoji font (Debian ``fonts-noto-color-emoji``) with Pillow. Caption: the
  emoji's CLDR short name ("grinning face", "flag: Germany"); category: its Unicode subgroup
  ("face smiling", "animal mammal"); attribute ``group``: its Unicode group ("Smileys & Emotion").
- ``openmoji``: the colour SVGs of the npm package ``openmoji`` rendered with cairosvg. Caption:
  the annotation; tags: the CLDR and OpenMoji keywords; category: the subgroup; ``group``: the group.
- ``openclipart``: the PNGs of Debian ``openclipart-png`` with titles and keywords from the
  ``<metadata>`` of the matching SVG in ``openclipart-svg``. Category: the folder ("mammals",
  "fruit", "flags"); ``group``: the top folder. A bounded subset: at most ``OPENCLIPART_PER_CATEGORY``
  images per category (evenly spaced over the sorted file names), without the folders ``special``
  (patterns, gradients) and ``unsorted`` (duplicates).

Skin-tone variants (the same drawing five more times) and Unicode's ``component`` group are left out.

``bash data_scripts/fetch.sh NAME`` fetches the sources with checksums and calls :func:`build_index`,
which writes ``data/NAME/v1/index.npz`` (RGB composited on white and the alpha mask, both
``STORED_SIZE`` pixels, captions, tags, categories, the split) with ``index.json`` and a SHA-256
``MANIFEST.sha256``. A rebuild from the same sources is byte-identical. :func:`load` checks the manifest.

**Splits.** The split is frozen in the index. ``HELDOUT_FRACTION`` of the categories are held
out, drawn with a fixed seed among categories of ``HELDOUT_MIN_IMAGES`` images or more and at most
``HELDOUT_MAX_TO_MEDIAN`` times the median category; all their images are ``test`` images. The
images of every seen category are split 80/20 into ``train`` and ``test``. ``holdout=False`` (the
default) gives the seen categories, ``holdout=True`` the held-out ones (``test`` only): train CLIP
on ``load(name, "train")``, score retrieval on ``load(name, "test")`` and zero-shot on
``load(name, "test", holdout=True)``, whose ``classes`` are exactly the held-out category names.
``classes`` always lists the categories of the selection, so ``labels`` index the seen or the
held-out names; ``extras["heldout_classes"]`` lists the others. ``holdout`` works as in ``shapes``.

>>> names = _parse_emoji_test(["# group: Smileys & Emotion", "# subgroup: face-smiling",
...     "1F600 ; fully-qualified # \\U0001F600 E1.0 grinning face",
...     "1F44B 1F3FB ; fully-qualified # x E1.0 waving hand: light skin tone"])
>>> [(r.caption, r.category, r.group) for r in names]
[('grinning face', 'face smiling', 'Smileys & Emotion')]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from vfm_lab.data import DataMissingError, ImageSet
from vfm_lab.data.real import SPLIT_SEED, _check_args, _corrupt, _find_root, _fixed_split, _resize, _subset

ICON_SETS = ("emoji", "openmoji", "openclipart")
INDEX_VERSION = "v1"  # bump when the index layout or the build rules change: old indexes are then not found
STORED_SIZE = 64  # pixels of the stored images; load(image_size=) resizes from these
HELDOUT_FRACTION = 0.2  # share of the categories held out for zero-shot
HELDOUT_MIN_IMAGES = 6  # a held-out category has at least this many images ...
HELDOUT_MAX_TO_MEDIAN = 4  # ... and at most this many times the median category's (never the 258 country flags)
OPENCLIPART_PER_CATEGORY = 150  # images kept per OpenClipart folder (computer icons: 1,853; stars: 1,378)
OPENCLIPART_MAX_PIXELS = 4_000_000  # larger PNGs (a few have hundreds of megapixels) are drawn from their SVG
OPENCLIPART_SKIP = ("special", "unsorted")  # patterns, gradients, examples; duplicates
NOTO_PPEM = 109  # the one bitmap strike of Noto Color Emoji (136 x 128 pixels per glyph)
MAX_SKIPPED = 0.01  # share of icons that may fail to draw (named in index.json) before a build is refused
TAG_SEP = "|"  # joins an image's tags in the index
SKIN_TONES = range(0x1F3FB, 0x1F400)  # Fitzpatrick modifiers U+1F3FB..U+1F3FF
# where each set's sources lie below the source root (a Debian root, or the npm package folder)
EMOJI_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "usr/share/unicode/emoji/emoji-test.txt"
OPENMOJI_JSON = "data/openmoji.json"
OPENMOJI_SVG = "color/svg"
OPENCLIPART = "usr/share/openclipart"
INDEX_FILES = ("index.npz", "index.json")


@dataclass
class Icon:
    """One image-text pair before rendering: ``draw()`` gives RGBA uint8 (STORED_SIZE, STORED_SIZE, 4)."""

    key: str  # the emoji, the OpenMoji hexcode or the OpenClipart path: unique within a set
    caption: str
    category: str
    group: str
    draw: Callable[[], np.ndarray] = field(repr=False, default=None)
    tags: list[str] = field(default_factory=list)


# --- loading ---------------------------------------------------------------------------------------

def load(name: str, split: str = "train", image_size: int = STORED_SIZE, n: int | None = None, seed: int = 0,
         holdout: bool = False, root: str | None = None) -> ImageSet:
    """Image-caption pairs of the icon set ``name`` (one of ``ICON_SETS``), RGB on white.

    ``labels`` index ``classes``, the categories of the selection (seen ones, or held-out ones when
    ``holdout=True``); attribute ``group`` indexes ``attribute_values["group"]``; ``captions`` hold one
    text per image; extras: ``alpha`` (N, S, S) uint8 opacity, ``tags`` (lists of keywords), ``key``
    (the emoji, hexcode or file), ``heldout_classes`` (the categories not in this selection).
    ``n`` takes the first ``n`` of a permutation seeded by ``seed``. The index is looked for in
    ``root``, ``$VFM_LAB_DATA/NAME``, ``./data/NAME`` and the checkout's ``data/NAME``.
    """
    if name not in ICON_SETS:
        raise ValueError(f"icon set {name!r} does not exist; choose one of {', '.join(ICON_SETS)}")
    _check_args(split, image_size)
    if not isinstance(holdout, bool):
        raise ValueError(f"holdout={holdout!r} must be True or False")
    if holdout and split == "train":
        raise ValueError(f"{name}: held-out categories have no train images (all of them are test images); "
                         f"use split='test' with holdout=True, or holdout=False for training")
    folder = _find_root(name, root, f"{INDEX_VERSION}/index.npz") / INDEX_VERSION
    ix = _read_index(folder, name)
    image_heldout = ix["heldout"][ix["category"]]  # (N,) bool
    keep = np.flatnonzero((image_heldout == holdout) & (ix["is_test"] == (split == "test")))
    keep = keep[_subset(len(keep), n, seed, f"{name} {split} holdout={holdout}")]
    chosen = np.flatnonzero(ix["heldout"] == holdout)  # global ids of this selection's categories
    local = np.full(len(ix["heldout"]), -1, dtype=np.int64)
    local[chosen] = np.arange(len(chosen))
    images = torch.from_numpy(ix["images"][keep])  # (N, 3, 64, 64)
    alpha = torch.from_numpy(ix["alpha"][keep])[:, None]  # (N, 1, 64, 64)
    if image_size != STORED_SIZE:
        images, alpha = _resize(images, image_size), _resize(alpha, image_size)
    categories, groups = ix["categories"].tolist(), ix["groups"].tolist()
    return ImageSet(
        name=name, images=images, labels=torch.from_numpy(local[ix["category"][keep]]),
        classes=[categories[c] for c in chosen],
        attributes={"group": torch.from_numpy(ix["group"][keep].astype(np.int64))},
        attribute_values={"group": groups},
        captions=ix["captions"][keep].tolist(),
        extras={"alpha": alpha[:, 0], "key": ix["keys"][keep].tolist(),
                "tags": [t.split(TAG_SEP) if t else [] for t in ix["tags"][keep].tolist()],
                "heldout_classes": [c for c, h in zip(categories, ix["heldout"]) if h != holdout]},
    )


def _read_index(folder: Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of ``folder/index.npz`` after checking ``MANIFEST.sha256`` (cached per file version)."""
    stat = (folder / "index.npz").stat()
    return _read_index_cached(str(folder), name, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=3)
def _read_index_cached(folder: str, name: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    path = Path(folder)
    manifest = path / "MANIFEST.sha256"
    if not manifest.is_file():
        raise _corrupt(path / "index.npz", name, "MANIFEST.sha256 is missing: the build did not finish")
    for line in manifest.read_text().splitlines():
        sha, file = line.split(maxsplit=1)
        found = hashlib.sha256((path / file).read_bytes()).hexdigest() if (path / file).is_file() else "missing"
        if found != sha:
            raise _corrupt(path / file, name, f"sha256 {found}, the manifest says {sha}")
    with np.load(path / "index.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --- building --------------------------------------------------------------------------------------

def build_index(name: str, source: str | Path, dest: str | Path, note: str = "") -> Path:
    """Render set ``name`` from the sources under ``source`` into ``dest/v1`` (index.npz, index.json,
    MANIFEST.sha256) and return that folder. ``note`` (for example the package versions) goes into
    index.json. The same sources and library versions give the same bytes."""
    if name not in ICON_SETS:
        raise ValueError(f"icon set {name!r} does not exist; choose one of {', '.join(ICON_SETS)}")
    source = Path(source)
    readers = {"emoji": _emoji_icons, "openmoji": _openmoji_icons, "openclipart": _openclipart_icons}
    icons, inputs = readers[name](source)
    if len({i.key for i in icons}) != len(icons):
        raise ValueError(f"{name}: the sources under {source} name some icon twice")
    drawn, skipped = {}, []
    for icon in icons:
        try:
            drawn[icon.key] = icon.draw()
        except Exception as e:  # a broken file: name it in index.json, build the rest
            skipped.append(f"{icon.key}: {type(e).__name__}: {e}")
    if len(skipped) > MAX_SKIPPED * len(icons):
        raise ValueError(f"{name}: {len(skipped)} of {len(icons)} icons under {source} could not be drawn, "
                         f"for example {skipped[:3]}")
    icons = [i for i in icons if i.key in drawn]
    rgba = np.stack(list(drawn.values()))  # (N, S, S, 4), in the order of icons
    alpha = rgba[..., 3:].astype(np.float32) / 255
    rgb = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)  # composited on white
    categories = sorted({i.category for i in icons})
    groups = sorted({i.group for i in icons})
    category = np.array([categories.index(i.category) for i in icons], dtype=np.int64)
    counts = np.bincount(category, minlength=len(categories))
    heldout = _heldout(counts)
    is_test = heldout[category]  # (N,) bool: every image of a held-out category ...
    is_test[_fixed_split(category, "test")] = True  # ... and 20 % of every seen category's
    arrays = {
        "images": np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)),  # (N, 3, S, S)
        "alpha": np.ascontiguousarray(rgba[..., 3]),  # (N, S, S)
        "captions": np.array([i.caption for i in icons]), "keys": np.array([i.key for i in icons]),
        "tags": np.array([TAG_SEP.join(i.tags) for i in icons]),
        "category": category, "categories": np.array(categories), "heldout": heldout,
        "group": np.array([groups.index(i.group) for i in icons], dtype=np.int64), "groups": np.array(groups),
        "is_test": is_test,
    }
    meta = _describe(name, arrays, inputs, note) | {"skipped": skipped}
    out = Path(dest) / INDEX_VERSION
    tmp = out.with_name(f".{INDEX_VERSION}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_npz(tmp / "index.npz", arrays)
    (tmp / "index.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    (tmp / "MANIFEST.sha256").write_text("".join(
        f"{hashlib.sha256((tmp / f).read_bytes()).hexdigest()}  {f}\n" for f in INDEX_FILES))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _heldout(counts: np.ndarray) -> np.ndarray:
    """(C,) bool: ``HELDOUT_FRACTION`` of the categories, drawn with ``SPLIT_SEED`` among those with
    ``HELDOUT_MIN_IMAGES`` to ``HELDOUT_MAX_TO_MEDIAN`` x the median count of images."""
    eligible = np.flatnonzero((counts >= HELDOUT_MIN_IMAGES) & (counts <= HELDOUT_MAX_TO_MEDIAN * np.median(counts)))
    take = min(len(eligible), max(1, round(HELDOUT_FRACTION * len(counts))))
    if take == 0:
        raise ValueError(f"no category has {HELDOUT_MIN_IMAGES} to {HELDOUT_MAX_TO_MEDIAN} x the median number "
                         f"of images (counts {counts.tolist()}); nothing can be held out")
    heldout = np.zeros(len(counts), dtype=bool)
    heldout[np.random.default_rng(SPLIT_SEED).permutation(eligible)[:take]] = True
    return heldout


def _describe(name: str, arrays: dict[str, np.ndarray], inputs: dict[str, Path], note: str) -> dict:
    import PIL
    from PIL import features

    counts = np.bincount(arrays["category"], minlength=len(arrays["categories"]))
    held = arrays["heldout"]
    tools = {"pillow": PIL.__version__, "freetype": features.version("freetype2"), "raqm": features.version("raqm"),
             "numpy": np.__version__}
    if name != "emoji":
        import cairocffi
        import cairosvg
        tools |= {"cairosvg": cairosvg.__version__, "cairo": cairocffi.cairo_version_string()}
    return {
        "name": name, "version": INDEX_VERSION, "image_size": STORED_SIZE, "note": note,
        "images": len(arrays["captions"]), "categories": len(counts), "heldout_categories": int(held.sum()),
        "images_heldout": int(counts[held].sum()), "train": int((~arrays["is_test"]).sum()),
        "test": int(arrays["is_test"].sum()),
        "heldout": [c for c, h in zip(arrays["categories"].tolist(), held) if h],
        "per_category": dict(zip(arrays["categories"].tolist(), counts.tolist())),
        "sources": {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in inputs.items()},
        "tools": tools,
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so that equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def _readable(slug: str) -> str:
    """A category name for prompts: "animal-mammal" -> "animal mammal", "breads_and_carbs" -> "breads and carbs"."""
    return re.sub(r"[-_\s]+", " ", slug).strip()


def _fit(im, size: int = STORED_SIZE) -> np.ndarray:
    """A PIL image as RGBA uint8 (size, size, 4): scaled so its longer side is ``size``, centred on transparency."""
    from PIL import Image

    im = im.convert("RGBA")
    scale = size / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(im, ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas)


def _need(path: Path, name: str) -> Path:
    if not path.is_file() and not path.is_dir():
        raise DataMissingError(f"{path} is missing, so {name} cannot be built; fetch it with "
                               f"`bash data_scripts/fetch.sh {name}`")
    return path


# --- emoji: emoji-test.txt + Noto Color Emoji ---------------------------------------------------------

def _parse_emoji_test(lines: Iterable[str]) -> list[Icon]:
    """Fully-qualified emoji of ``emoji-test.txt`` (``CODEPOINTS ; STATUS # EMOJI E1.0 NAME``) without
    skin tones and the Component group, with their group and subgroup."""
    group = subgroup = ""
    icons = []
    for line in lines:
        line = line.strip()
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            points = [int(c, 16) for c in codes.split()]
            if status.strip() != "fully-qualified" or group == "Component" or any(p in SKIN_TONES for p in points):
                continue
            caption = re.sub(r"^\S+\s+E\d+\.\d+\s+", "", comment.strip())  # drop the emoji and its version
            icons.append(Icon("".join(map(chr, points)), caption, _readable(subgroup), group))
    return icons


def _emoji_icons(source: Path) -> tuple[list[Icon], dict[str, Path]]:
    from PIL import Image, ImageDraw, ImageFont

    font_path, test_path = _need(source / EMOJI_FONT, "emoji"), _need(source / EMOJI_TEST, "emoji")
    font = ImageFont.truetype(str(font_path), NOTO_PPEM)
    icons = _parse_emoji_test(test_path.read_text(encoding="utf-8").splitlines())

    def draw(text: str) -> np.ndarray:
        left, top, right, bottom = font.getbbox(text)
        side = max(right - left, bottom - top)  # the glyph box (136 x 128 for Noto), made square
        im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        ImageDraw.Draw(im).text(((side - right + left) // 2 - left, (side - bottom + top) // 2 - top), text, font=font,
                                embedded_color=True, fill="black")
        return _fit(im)

    for icon in icons:
        icon.draw = functools.partial(draw, icon.key)
    return icons, {"font": font_path, "emoji-test.txt": test_path}


# --- openmoji: openmoji.json + colour SVGs ------------------------------------------------------------

def _split_tags(*fields: str) -> list[str]:
    """Comma-separated keyword fields as one list without repeats, in order."""
    return list(dict.fromkeys(t.strip() for f in fields for t in f.split(",") if t.strip()))


def _openmoji_icons(source: Path) -> tuple[list[Icon], dict[str, Path]]:
    import cairosvg
    from PIL import Image

    table_path, svg_dir = _need(source / OPENMOJI_JSON, "openmoji"), _need(source / OPENMOJI_SVG, "openmoji")
    table = json.loads(table_path.read_text(encoding="utf-8"))

    def draw(svg: Path) -> np.ndarray:
        png = cairosvg.svg2png(url=str(svg), output_width=STORED_SIZE, output_height=STORED_SIZE)
        return _fit(Image.open(io.BytesIO(png)))

    icons = []
    for row in table:
        if row["skintone"] or row["group"] == "component":
            continue
        icon = Icon(row["hexcode"], row["annotation"], _readable(row["subgroups"]), _readable(row["group"]),
                    tags=_split_tags(row["tags"], row["openmoji_tags"]))
        icon.draw = functools.partial(draw, _need(svg_dir / f"{row['hexcode']}.svg", "openmoji"))
        icons.append(icon)
    return icons, {"openmoji.json": table_path}


# --- openclipart: PNGs + SVG metadata -----------------------------------------------------------------

_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_NOISE_TAG = re.compile(r"^(hash|0x[0-9a-f]+|\d+)$")  # Perl hash addresses and numbers in old keyword lists


def _svg_metadata(svg: Path) -> tuple[str, list[str]]:
    """(title, keywords) from an OpenClipart SVG's RDF ``<metadata>`` (Dublin Core ``title``, ``subject``)."""
    import xml.etree.ElementTree as ET

    try:
        work = next(ET.parse(svg).getroot().iter("{http://web.resource.org/cc/}Work"), None)
    except ET.ParseError:
        return "", []
    if work is None:
        return "", []
    title = (work.findtext(f"{_DC}title") or "").strip()
    tags = [li.text or "" for li in work.iterfind(f"{_DC}subject/{_RDF}Bag/{_RDF}li")]
    tags = [_readable(t.lower()) for t in tags if t.strip() and not _NOISE_TAG.match(t.strip().lower())]
    return title, list(dict.fromkeys(tags))


def _clean_title(title: str, stem: str, shared: bool) -> str:
    """A caption from an OpenClipart title: without "Clipart by AUTHOR - " and dates; the file name
    instead when the title is missing or names a collection (``shared`` by many files)."""
    title = re.sub(r"^Clipart by .*? - ", "", title)
    title = re.sub(r"\s*\([^)]*\d{4}\)", "", title).strip()
    if shared or not title:
        title = re.sub(r"_0\d$", "", stem)  # "bored_dog_01" -> "bored_dog"
    return _readable(title)


def _openclipart_icons(source: Path) -> tuple[list[Icon], dict[str, Path]]:
    import cairosvg
    from PIL import Image

    png_dir = _need(source / OPENCLIPART / "png", "openclipart")
    svg_dir = _need(source / OPENCLIPART / "svg", "openclipart")
    by_category: dict[str, list[Path]] = {}  # category -> PNG paths relative to png_dir, sorted
    for png in sorted(png_dir.rglob("*.png")):
        rel = png.relative_to(png_dir)
        folders = rel.parts[:-1]  # ("animals", "mammals", "dogs")
        if folders and folders[0] not in OPENCLIPART_SKIP and (svg_dir / rel).with_suffix(".svg").is_file():
            by_category.setdefault(_readable(folders[min(1, len(folders) - 1)]), []).append(rel)
    chosen = []  # (category, relative path): at most OPENCLIPART_PER_CATEGORY, evenly spaced
    for category, files in sorted(by_category.items()):
        step = max(1, len(files) / OPENCLIPART_PER_CATEGORY)
        chosen += [(category, files[int(i * step)]) for i in range(min(len(files), OPENCLIPART_PER_CATEGORY))]
    metadata = {rel: _svg_metadata((svg_dir / rel).with_suffix(".svg")) for _, rel in chosen}
    title_counts: dict[str, int] = {}
    for title, _ in metadata.values():
        title_counts[title] = title_counts.get(title, 0) + 1

    def draw(rel: Path) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(png_dir / rel) as im:  # reads the header only
                    if im.width * im.height <= OPENCLIPART_MAX_PIXELS:
                        return _fit(im)
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                pass  # larger than Pillow opens
        # a poster-sized PNG: draw the same picture from its SVG
        svg = (svg_dir / rel).with_suffix(".svg")
        return _fit(Image.open(io.BytesIO(cairosvg.svg2png(url=str(svg), output_width=2 * STORED_SIZE))))

    icons = []
    for category, rel in chosen:
        title, tags = metadata[rel]
        caption = _clean_title(title, rel.stem, shared=title_counts[title] >= 10)
        icons.append(Icon(rel.as_posix(), caption, category, _readable(rel.parts[0]), functools.partial(draw, rel),
                          tags))
    return icons, {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the index of an icon set from its fetched sources "
                                                 "(data_scripts/fetch.sh calls this).")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("name", choices=ICON_SETS)
    parser.add_argument("source", help="folder holding the sources (a Debian root, or the npm package folder)")
    parser.add_argument("dest", help="the set's data folder; the index goes to DEST/v1")
    parser.add_argument("--note", default="", help="recorded in index.json, e.g. the package versions")
    args = parser.parse_args(argv)
    out = build_index(args.name, args.source, args.dest, args.note)
    meta = json.loads((out / "index.json").read_text())
    print(f"{args.name}: {meta['images']} images, {meta['categories']} categories "
          f"({meta['heldout_categories']} held out, {meta['images_heldout']} images), "
          f"train {meta['train']}, test {meta['test']} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
