"""Check a built site: every page loads only files of the site (``make docs`` runs this).

A resource a page loads (script, stylesheet, image, frame, font) must be a relative path or a
``data:`` URI, and exist in the build; links to other sites (``<a href>``) are fine.
"""

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOADS = {("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"),
         ("source", "src"), ("video", "src"), ("audio", "src"), ("embed", "src"), ("object", "data")}


class _Loads(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and "stylesheet" not in (attrs.get("rel") or "") and "icon" not in (
                attrs.get("rel") or "") and attrs.get("as") is None:
            return  # <link rel="next"> and the like are links, not loads
        for t, a in LOADS:
            if tag == t and attrs.get(a):
                self.found.append(attrs[a])


def problems(root):
    root = Path(root)
    out = []
    for sheet in sorted(root.rglob("*.css")):
        for url in re.findall(r"url\(['\"]?(https?:)?//[^)'\"]+", sheet.read_text(encoding="utf-8")):
            out.append(f"{sheet.relative_to(root)}: loads a file from outside the site")
    for page in sorted(root.rglob("*.html")):
        if "_static" in page.relative_to(root).parts:
            continue  # the theme's own templates, not pages
        parser = _Loads()
        text = page.read_text(encoding="utf-8")
        parser.feed(text)
        urls = parser.found + re.findall(r"url\((?!['\"]?data:)['\"]?(https?://[^)'\"]+)", text)
        for url in urls:
            parts = urlsplit(url)
            if url.startswith("data:"):
                continue
            if parts.scheme or parts.netloc:
                out.append(f"{page.relative_to(root)}: loads {url} from outside the site")
            elif not (page.parent / unquote(parts.path)).exists():
                out.append(f"{page.relative_to(root)}: loads {url}, which the build lacks")
    return out


if __name__ == "__main__":
    found = problems(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    for line in found:
        print(line)
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    pages = [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]
    print(f"{len(pages)} pages checked: {len(found)} problem(s) loading files from outside the site")
    sys.exit(1 if found else 0)
