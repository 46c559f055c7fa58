"""Icon sets with text (vfm_lab/data/icons.py) and their fetch path (data_scripts/fetch.sh, verify.py).

The builders run on tiny fixtures written here: an ``emoji-test.txt`` drawn with matplotlib's
DejaVu Sans (a plain font stands in for Noto Color Emoji), an ``openmoji.json`` with a few SVGs,
and an OpenClipart tree of PNGs with SVG metadata. The real indexes are checked where
``bash data_scripts/fetch.sh NAME`` put them (skipped when absent).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from vfm_lab.data import DataMissingError, icons, load

REPO = Path(__file__).resolve().parents[1]
VERIFY = runpy.run_path(str(REPO / "data_scripts" / "verify.py"))
DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"

# (subgroup, [(code point, CLDR-like name)]): characters DejaVu Sans has; 4 categories of 6-8
EMOJI_FIXTURE = {
    "arrow": [(0x2190, "left arrow"), (0x2191, "up arrow"), (0x2192, "right arrow"), (0x2193, "down arrow"),
              (0x2194, "left-right arrow"), (0x2195, "up-down arrow"), (0x2196, "up-left arrow")],
    "game": [(0x2654, "white king"), (0x2655, "white queen"), (0x2656, "white rook"), (0x2657, "white bishop"),
             (0x2658, "white knight"), (0x2659, "white pawn")],
    "card-suit": [(0x2660, "spade suit"), (0x2663, "club suit"), (0x2665, "heart suit"), (0x2666, "diamond suit"),
                  (0x2664, "white spade suit"), (0x2667, "white club suit")],
    "sky-weather": [(0x2600, "sun"), (0x2601, "cloud"), (0x2602, "umbrella"), (0x2603, "snowman"),
                    (0x2604, "comet"), (0x2605, "star"), (0x2606, "white star"), (0x263C, "sun with rays")],
}


def write_emoji_source(root: Path) -> Path:
    lines = ["# emoji-test.txt fixture", "# group: Symbols"]
    for subgroup, chars in EMOJI_FIXTURE.items():
        lines.append(f"# subgroup: {subgroup}")
        lines += [f"{cp:04X} ; fully-qualified # {chr(cp)} E0.6 {name}" for cp, name in chars]
    lines += ["2639 ; unqualified # x E0.7 frowning face",  # not fully qualified: left out
              "270B 1F3FD ; fully-qualified # x E1.0 raised hand: medium skin tone",  # a skin tone: left out
              "# group: Component", "# subgroup: skin-tone", "1F3FB ; component # x E1.0 light skin tone"]
    (root / Path(icons.EMOJI_TEST).parent).mkdir(parents=True)
    (root / icons.EMOJI_TEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / Path(icons.EMOJI_FONT).parent).mkdir(parents=True)
    shutil.copy(DEJAVU, root / icons.EMOJI_FONT)
    return root


SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
       '<circle cx="36" cy="36" r="{r}" fill="{colour}"/></svg>')


def write_openmoji_source(root: Path) -> Path:
    rows = []
    for i, (subgroup, colour) in enumerate([("face-smiling", "#fcea2b"), ("animal-mammal", "#a57939"),
                                            ("food-fruit", "#d22f27"), ("transport-air", "#61b2e4")]):
        for j in range(6):
            rows.append({"emoji": "x", "hexcode": f"E{i}{j:02d}", "group": subgroup.split("-")[0] + "-group",
                         "subgroups": subgroup, "annotation": f"{subgroup.split('-')[1]} {j}",
                         "tags": "round, thing", "openmoji_tags": "thing, extra", "skintone": ""})
            (root / icons.OPENMOJI_SVG).mkdir(parents=True, exist_ok=True)
            (root / icons.OPENMOJI_SVG / f"E{i}{j:02d}.svg").write_text(SVG.format(r=10 + 4 * j, colour=colour))
    rows.append(dict(rows[0], hexcode="E000-1F3FB", skintone="1F3FB"))  # a skin-tone variant: left out
    rows.append(dict(rows[0], hexcode="1F3FB", group="component"))  # a component: left out
    (root / "data").mkdir(parents=True)
    (root / icons.OPENMOJI_JSON).write_text(json.dumps(rows))
    return root


def clipart_svg(title: str, tags: list[str]) -> str:
    items = "".join(f"<rdf:li>{t}</rdf:li>" for t in tags)
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'width="40" height="20"><metadata><rdf:RDF><cc:Work rdf:about="">'
            f'<dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>'
            '</cc:Work></rdf:RDF></metadata><rect width="40" height="20" fill="#2060c0"/></svg>')


def write_openclipart_source(root: Path) -> Path:
    base = root / icons.OPENCLIPART
    files = [(f"animals/mammals/dogs/dog_{i}_01", f"Clipart by Someone - Dog {i}", ["mammal", "hash", "0x8b754fc"])
             for i in range(7)]
    files += [(f"food/fruit/apple_{i}", f"Apple {i} (Wed Aug 25 23:29:46 2004)", ["fruit", "food"]) for i in range(6)]
    files += [(f"computer/icons/lemon_{i}", "Lemon SVG theme", ["icons", "lemon_theme_icon"]) for i in range(12)]
    files += [(f"office/desk_{i}", "", ["office"]) for i in range(6)]
    files += [("special/patterns/dots", "dots", ["pattern"]), ("unsorted/thing", "thing", [])]  # left out
    for stem, title, tags in files:
        for kind in ("png", "svg"):
            (base / kind / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (40, 20), (192, 32, 32, 255)).save(base / "png" / f"{stem}.png")  # red; the SVG is blue
        (base / "svg" / f"{stem}.svg").write_text(clipart_svg(title, tags))
    Image.new("RGBA", (8, 8)).save(base / "png" / "office" / "no_svg.png")  # no metadata: left out
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each fixture set built once: name -> data folder (holding v1/)."""
    out = {}
    for name, writer in (("emoji", write_emoji_source), ("openmoji", write_openmoji_source),
                         ("openclipart", write_openclipart_source)):
        source = writer(tmp_path_factory.mktemp(f"{name}_src"))
        dest = tmp_path_factory.mktemp(name)
        icons.build_index(name, source, dest, note="fixture")
        out[name] = dest
    return out


def every_selection(name: str, root: Path) -> dict[tuple[str, bool], object]:
    """Seen categories' train and test images, and the held-out categories' images (all test)."""
    return {(split, holdout): icons.load(name, split, holdout=holdout, root=str(root))
            for split, holdout in (("train", False), ("test", False), ("test", True))}


# --- building and loading ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, total", [("emoji", 27), ("openmoji", 24), ("openclipart", 31)])
def test_selections_partition_the_set_and_holdout_categories_are_unseen(built, name, total):
    parts = every_selection(name, built[name])
    keys = [k for ds in parts.values() for k in ds.extras["key"]]
    assert len(keys) == len(set(keys)) == total  # disjoint, nothing lost
    seen, held = set(parts["train", False].classes), set(parts["test", True].classes)
    assert seen and held and not seen & held
    assert set(parts["test", False].classes) == seen and set(parts["train", False].extras["heldout_classes"]) == held
    with pytest.raises(ValueError, match="held-out categories have no train images"):
        icons.load(name, "train", holdout=True, root=str(built[name]))
    for ds in parts.values():
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 64, 64)
        assert ds.extras["alpha"].shape == (len(ds), 64, 64) and len(ds.captions) == len(ds)
        assert all(isinstance(c, str) and c.strip() for c in ds.captions)
        assert 0 <= int(ds.labels.min()) and int(ds.labels.max()) < len(ds.classes)
        assert len(ds.attribute_values["group"]) > int(ds.attributes["group"].max())
    meta = json.loads((built[name] / "v1" / "index.json").read_text())
    assert meta["images"] == total and meta["heldout"] == sorted(held) and meta["note"] == "fixture"
    assert meta["test"] == meta["images_heldout"] + len(parts["test", False])


def test_emoji_keeps_fully_qualified_emoji_without_skin_tones(built):
    ds = icons.load("emoji", "train", root=str(built["emoji"]))
    names = {n for chars in EMOJI_FIXTURE.values() for _, n in chars}
    assert set(ds.captions) <= names and ds.attribute_values["group"] == ["Symbols"]
    for key, caption, label in zip(ds.extras["key"], ds.captions, ds.labels):
        subgroup = next(s for s, chars in EMOJI_FIXTURE.items() if (ord(key), caption) in chars)
        assert ds.classes[label] == subgroup.replace("-", " ")
    # a glyph was drawn: dark strokes on white where the glyph is opaque, white elsewhere
    opaque = ds.extras["alpha"] > 128
    assert opaque.any(1).any(1).all() and (ds.images.float().mean(1)[opaque] < 100).float().mean() > 0.9
    assert (ds.images.float().mean(1)[ds.extras["alpha"] == 0] == 255).all()


def test_openmoji_captions_tags_and_renders(built):
    for ds in every_selection("openmoji", built["openmoji"]).values():
        assert all(t == ["round", "thing", "extra"] for t in ds.extras["tags"])  # CLDR + OpenMoji tags, no repeats
        assert all(k.startswith("E") and "-" not in k for k in ds.extras["key"])  # no skin tone, no component
        for i in (i for i, k in enumerate(ds.extras["key"]) if k.startswith("E2")):  # food-fruit: red circles
            assert ds.classes[ds.labels[i]] == "food fruit" and ds.captions[i].startswith("fruit ")
            assert ds.images[i, :, 32, 32].tolist() == [0xd2, 0x2f, 0x27] and ds.extras["alpha"][i, 32, 32] == 255


def test_openclipart_titles_keywords_and_folders(built):
    parts = every_selection("openclipart", built["openclipart"])
    rows = {k: (c, ds.classes[y], t) for ds in parts.values()
            for k, c, y, t in zip(ds.extras["key"], ds.captions, ds.labels.tolist(), ds.extras["tags"])}
    assert rows["animals/mammals/dogs/dog_3_01.png"] == ("Dog 3", "mammals", ["mammal"])  # author, noise dropped
    assert rows["food/fruit/apple_2.png"] == ("Apple 2", "fruit", ["fruit", "food"])  # the date dropped
    assert rows["computer/icons/lemon_5.png"] == ("lemon 5", "icons", ["icons", "lemon theme icon"])  # collection
    assert rows["office/desk_1.png"][:2] == ("desk 1", "office")  # no title: the file name
    assert not any(k.startswith(("special/", "unsorted/")) or k == "office/no_svg.png" for k in rows)
    # a 40 x 20 picture fits the square: full width, transparent bands above and below
    ds = parts["train", False]
    i = ds.extras["key"].index("food/fruit/apple_0.png")
    alpha = ds.extras["alpha"][i]
    assert alpha[32].eq(255).all() and alpha[:15].eq(0).all() and alpha[-15:].eq(0).all()
    assert ds.images[i, :, 32, 32].tolist() == [192, 32, 32]  # the PNG's red


def test_openclipart_caps_each_category_and_draws_huge_pngs_from_the_svg(tmp_path, monkeypatch):
    source = write_openclipart_source(tmp_path / "src")
    monkeypatch.setattr(icons, "OPENCLIPART_PER_CATEGORY", 6)
    monkeypatch.setattr(icons, "OPENCLIPART_MAX_PIXELS", 100)  # every 40 x 20 PNG counts as huge
    icons.build_index("openclipart", source, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "v1" / "index.json").read_text())
    assert meta["per_category"] == {"fruit": 6, "icons": 6, "mammals": 6, "office": 6} and meta["skipped"] == []
    ds = icons.load("openclipart", "train", root=str(tmp_path / "out"))
    opaque = ds.extras["alpha"] == 255
    assert opaque.any() and (ds.images[:, 2][opaque] > 150).all()  # the SVG's blue rectangle


def test_rebuild_is_byte_identical_and_loading_is_deterministic(built, tmp_path):
    icons.build_index("openmoji", write_openmoji_source(tmp_path / "src"), tmp_path / "again", note="fixture")
    for file in ("MANIFEST.sha256", "index.json"):
        assert (tmp_path / "again" / "v1" / file).read_bytes() == (built["openmoji"] / "v1" / file).read_bytes()
    a, b = (load("openmoji", "train", root=str(built["openmoji"]), n=8, seed=3) for _ in range(2))
    c = load("openmoji", "train", root=str(built["openmoji"]), n=8, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.extras["key"] != c.extras["key"]
    small = load("emoji", "test", root=str(built["emoji"]), image_size=16)
    assert small.images.shape[1:] == (3, 16, 16) and small.extras["alpha"].shape[1:] == (16, 16)


def test_a_set_with_too_many_undrawable_icons_is_refused(tmp_path):
    source = write_openmoji_source(tmp_path / "src")
    (source / icons.OPENMOJI_SVG / "E100.svg").write_text("<svg")  # truncated
    with pytest.raises(ValueError, match=r"1 of 24 icons .* could not be drawn.*E100"):
        icons.build_index("openmoji", source, tmp_path / "out")
    assert not (tmp_path / "out" / "v1").exists()


# --- refusals -------------------------------------------------------------------------------------

def test_a_tampered_or_unfinished_index_is_refused(built, tmp_path):
    root = tmp_path / "emoji"
    shutil.copytree(built["emoji"], root)
    data = bytearray((root / "v1" / "index.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "v1" / "index.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"index\.npz is corrupt or incomplete .*bash data_scripts/fetch\.sh emoji"):
        icons.load("emoji", root=str(root))
    (root / "v1" / "MANIFEST.sha256").unlink()
    with pytest.raises(ValueError, match=r"MANIFEST\.sha256 is missing.*fetch\.sh emoji"):
        icons.load("emoji", root=str(root))
    result = subprocess.run([sys.executable, str(REPO / "data_scripts" / "verify.py"), "--manifest",
                             str(built["emoji"] / "v1" / "MANIFEST.sha256")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_sets_and_bad_arguments_name_the_fix(tmp_path, built):
    for name in icons.ICON_SETS:
        with pytest.raises(DataMissingError, match=rf"bash data_scripts/fetch\.sh {name}"):
            load(name, "train", root=str(tmp_path))
    with pytest.raises(DataMissingError, match=r"NotoColorEmoji\.ttf is missing.*fetch\.sh emoji"):
        icons.build_index("emoji", tmp_path, tmp_path / "out")
    root = str(built["emoji"])
    with pytest.raises(ValueError, match="choose one of emoji, openmoji, openclipart"):
        icons.load("noto", root=root)
    with pytest.raises(ValueError, match="split='val'"):
        icons.load("emoji", "val", root=root)
    with pytest.raises(ValueError, match="holdout=1 must be True or False"):
        icons.load("emoji", holdout=1, root=root)
    with pytest.raises(ValueError, match="n=999 is out of range"):
        icons.load("emoji", n=999, root=root)


def test_verify_checks_npm_integrity_strings_and_manifests(tmp_path):
    payload = b"openmoji tarball"
    good = tmp_path / "a.tgz"
    good.write_bytes(payload)
    sri = "sha512-" + base64.b64encode(hashlib.sha512(payload).digest()).decode()
    VERIFY["verify"](good, sri)
    with pytest.raises(VERIFY["ChecksumError"], match=r"a\.tgz is corrupt .*sha512"):
        VERIFY["verify"](good, "sha512-" + base64.b64encode(hashlib.sha512(b"other").digest()).decode())
    assert not good.exists()
    (tmp_path / "x").write_bytes(b"x")
    (tmp_path / "MANIFEST.sha256").write_text(f"{hashlib.sha256(b'y').hexdigest()}  x\n")
    rebuild = r"rebuild it with `bash data_scripts/fetch\.sh emoji`"
    with pytest.raises(VERIFY["ChecksumError"], match=r"x is corrupt .*" + rebuild):
        VERIFY["verify_manifest"](tmp_path / "MANIFEST.sha256", "bash data_scripts/fetch.sh emoji")
    assert (tmp_path / "x").exists()  # a built file is reported, not deleted


def fake_tools(tmp_path: Path) -> dict[str, str]:
    """PATH with stand-ins: ``npm pack`` and ``apt-get download`` write a wrong file, dpkg-query knows nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "npm": 'for a; do [[ $prev == --pack-destination ]] && d=$a; prev=$a; done\n'
               'echo "<html>not a tarball</html>" > "$d/openmoji-17.0.0.tgz"',
        "apt-get": '[[ $1 == download ]] || exit 1\nf=${2%%=*}_${2#*=}_all.deb\necho junk > "${f/:/%3a}"',
        "dpkg-query": "exit 1",
    }
    for tool, body in scripts.items():
        (bin_dir / tool).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable}


@pytest.mark.parametrize("name, bad", [("openmoji", "openmoji-17.0.0.tgz"),
                                       ("emoji", "fonts-noto-color-emoji_2.042-0+deb12u1_all.deb")])
def test_fetch_refuses_a_download_that_fails_its_checksum(tmp_path, name, bad):
    result = subprocess.run(["bash", str(REPO / "data_scripts" / "fetch.sh"), name, "out"], capture_output=True,
                            text=True, env=fake_tools(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert f"{bad} is corrupt or incomplete" in result.stderr
    assert f"bash data_scripts/fetch.sh {name} out" in result.stderr
    assert list((tmp_path / "out" / "downloads").iterdir()) == [] and not (tmp_path / "out" / "v1").exists()


# --- the real sets, where fetch.sh built them ------------------------------------------------------

@pytest.mark.parametrize("name", icons.ICON_SETS)
def test_real_index(name):
    folder = REPO / "data" / name
    if not (folder / "v1" / "index.npz").is_file():
        pytest.skip(f"{name} is not built here (bash data_scripts/fetch.sh {name})")
    meta = json.loads((folder / "v1" / "index.json").read_text())
    parts = every_selection(name, folder)
    assert sum(len(ds) for ds in parts.values()) == meta["images"] > 1500
    assert len(parts["test", True].classes) == meta["heldout_categories"] >= 10
    assert not set(parts["train", False].classes) & set(parts["test", True].classes)
    assert all(c.strip() for ds in parts.values() for c in ds.captions)
    assert len(meta["skipped"]) <= icons.MAX_SKIPPED * meta["images"]
