"""`make site`: the newest finished run of each chapter, a page per chapter, an index linking them (the browser test
in tests/test_browser.py reads the pages in Chromium)."""
import os
import shutil

from vfm_lab.reference import CHAPTERS
from vfm_lab.results import NOTEBOOKS
from vfm_lab.site import build_site, finished_run


def test_each_chapter_shows_its_newest_finished_run_or_says_it_has_none(tmp_path):
    runs = tmp_path / "runs"
    for name, done, mtime in (("old", True, 1_000), ("new", True, 2_000), ("unfinished", False, 3_000)):
        folder = runs / "09_pixel" / name
        folder.mkdir(parents=True)
        shutil.copy(NOTEBOOKS / "09_pixel.ipynb", folder / "09_pixel.ipynb")
        if done:
            (folder / "DONE").write_text("1 s\n")
            os.utime(folder / "DONE", (mtime, mtime))
    assert finished_run(runs, "09_pixel") == runs / "09_pixel" / "new" / "09_pixel.ipynb"
    assert finished_run(runs, "08_region") is None
    sources = build_site(runs, tmp_path / "site")
    assert sources["09_pixel"] == str(runs / "09_pixel" / "new") and "not run yet" in sources["08_region"]
    index = (tmp_path / "site" / "index.html").read_text()
    assert all(f'href="{c}.html"' in index for c in CHAPTERS)
    page = (tmp_path / "site" / "09_pixel.html").read_text()
    assert 'class="vfm-banner"' in page and "outputs of the run new" in page and "09 · Pixel level" in page
