"""The static site in headless Chromium: every page opens from disk, every table, image and link
resolves, nothing is fetched from the network; screenshots land outside git."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from report_fixtures import built_report, shared_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]

# CI sets LSQ_REQUIRE_BROWSER=1: there a missing Chromium is a failure, not a skip.
if CHROMIUM is None and os.environ.get("LSQ_REQUIRE_BROWSER"):
    raise RuntimeError("LSQ_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)"),
]


class Links(HTMLParser):
    """Every href/src of a page, and how many tables and images it has."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tables = self.images = 0

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self.images += tag == "img"
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.refs.append((tag, name, value))


def parse(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text())
    return links


def chromium(profile: Path, *args: str) -> str:
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    shared = shared_dir(tmp_path_factory)
    # Notebooks first: under xdist the other worker is likely building "full" meanwhile.
    notebooks = built_report("notebooks", shared).out / "site"
    return [built_report("full", shared).out / "site", notebooks]


def pages_of(site: Path, notebooks_only: bool = False) -> list[Path]:
    pages = sorted((site / "notebooks").glob("*.html"))
    if not notebooks_only:
        pages = sorted(site.glob("*.html")) + pages
    return pages


def test_every_local_link_and_image_resolves(sites):
    for site in sites:
        for page in pages_of(site):
            links = parse(page)
            for tag, attribute, value in links.refs:
                url = urlparse(value)
                if url.scheme in ("http", "https"):
                    # Navigation to the paper is fine; loading anything from the network is not.
                    assert tag == "a", f"{page.name}: external resource {value}"
                    continue
                if url.scheme == "data" or value.startswith("#") or url.scheme == "mailto":
                    continue
                assert not url.scheme, f"{page.name}: unexpected link {value}"
                target = (page.parent / unquote(url.path)).resolve()
                assert target.is_file(), f"{page.name}: {attribute}={value} does not exist"
                assert site.resolve() in target.parents, f"{page.name}: {value} leaves the site"
                if tag == "img":
                    assert target.read_bytes()[:4] == b"\x89PNG", value


def test_chromium_renders_every_page_with_its_tables(sites, tmp_path):
    full, notebooks = sites
    # The full site's pages, and the notebook site's notebook pages (its other pages are the
    # same templates as the full site's).
    pages = pages_of(full) + pages_of(notebooks, notebooks_only=True)

    def dump(numbered):  # one profile per browser: Chromium locks its user-data-dir
        number, page = numbered
        return chromium(tmp_path / f"profile-{number}", "--dump-dom", page.as_uri())

    # Two browsers at a time: each mostly waits on its own start-up, so this halves the wall time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        doms = list(pool.map(dump, enumerate(pages)))
    for page, dom in zip(pages, doms):
        expected = parse(page)
        rendered = Links()
        rendered.feed(dom)
        assert rendered.tables == expected.tables, page.name
        assert rendered.images == expected.images, page.name
        if page.parent == full and page.name != "index.html":
            assert expected.tables >= 2 and "<h2>" in dom, page.name
    index = doms[pages.index(full / "index.html")]
    for slug in ("fashion-mnist-quick", "cifar10-paper", "imagenet-quick", "synthetic-smoke"):
        assert f'href="{slug}.html"' in index


def test_screenshots(sites, tmp_path):
    profile = tmp_path / "chromium-profile"
    full = sites[0]
    shots = {}
    for name in ("index", "fashion-mnist-quick"):
        shot = tmp_path / f"{name}.png"
        chromium(profile, f"--screenshot={shot}", "--window-size=1280,2000",
                 (full / f"{name}.html").as_uri())
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
        shots[name] = shot
    # report/ is generated output (report/screenshot.png is gitignored): a copy to look at.
    (REPO / "report").mkdir(exist_ok=True)
    shutil.copyfile(shots["fashion-mnist-quick"], REPO / "report" / "screenshot.png")
