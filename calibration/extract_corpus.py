#!/usr/bin/env python3
"""Extract the calibration corpus (plain English prose) from Debian's python3.11-doc package.

Why: INT8 calibration and the demo model need real English sentences that anyone can rebuild from a
package registry. The Python documentation (PSF License Version 2) is several MB of edited prose.

What: every HTML page of the package (minus indexes, the search page and the license texts) is
parsed with the standard library; the text of each `<p>` element of the main body is one passage,
unless it sits in a table, a code block or an admonition title. Inline code stays as words ("the
len() function ..."); code blocks, signatures, headings and navigation are dropped. Whitespace is
collapsed, passages that are short or look like code are skipped, exact duplicates are removed
(first occurrence kept), and a hash of each passage decides train vs held-out (`HELDOUT_PERCENT`).

Usage (the committed files were made by the first form):
    apt-get download python3.11-doc=3.11.2-6+deb12u9
    python calibration/extract_corpus.py --deb python3.11-doc_3.11.2-6+deb12u9_all.deb
    python calibration/extract_corpus.py --html /usr/share/doc/python3.11/html   # installed package
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "corpus"
HTML_IN_DEB = "usr/share/doc/python3.11/html"

#: Pages that are not prose: indexes, search, tables of contents, the license and copyright texts.
SKIP_PAGES = re.compile(r"(^|/)(genindex[^/]*|py-modindex|search|contents|license|copyright|download)\.html$")
#: Held-out share in percent: a passage is held out when its hash modulo 100 is below this.
HELDOUT_PERCENT = 7
MIN_WORDS = 8
MIN_CHARS = 40
#: Share of letters among non-space characters below which a passage looks like code or a table.
MIN_LETTER_SHARE = 0.72
#: Tags whose text is never prose.
SKIP_TAGS = {"pre", "table", "script", "style", "nav", "dt", "h1", "h2", "h3", "h4", "h5", "h6"}
#: CSS classes whose subtree is dropped (code blocks, admonition titles, footnote labels, sidebars).
SKIP_CLASSES = {"highlight", "admonition-title", "sphinxsidebar", "related", "footer", "label",
                "rubric", "versionmodified", "headerlink"}
_VOID = {"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "base", "source"}


class _ParagraphParser(HTMLParser):
    """Collects the text of each <p> inside the main body, skipping code, tables and navigation."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skip subtree, is main body)
        self.paragraphs: list[str] = []
        self.current: list[str] | None = None

    def _skipping(self) -> bool:
        return any(skip for _, skip, _ in self.stack)

    def _in_main(self) -> bool:
        return any(main for _, _, main in self.stack)

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag == "br" and self.current is not None:
                self.current.append(" ")
            return
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES) or any(c.startswith("highlight") for c in classes)
        main = attrs.get("role") == "main"
        self.stack.append((tag, skip, main))
        if tag == "p" and self.current is None and self._in_main() and not self._skipping():
            self.current = []

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        # pop to the matching tag (tolerates unclosed inline tags)
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                break
        else:
            return
        if tag == "p" and self.current is not None:
            self.paragraphs.append("".join(self.current))
            self.current = None

    def handle_data(self, data):
        if self.current is not None and not self._skipping():
            self.current.append(data)


def clean(text: str) -> str:
    """NFC, one line, single spaces, no pilcrows or zero-width characters."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\u00b6", " ").replace("\u200b", "").replace("\u00a0", " ")
    return re.sub(r"\s+", " ", text).strip()


def looks_like_prose(text: str) -> bool:
    """Long enough, mostly letters, with lowercase words (not a list of names or a code line)."""
    if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS:
        return False
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters / len(chars) < MIN_LETTER_SHARE:
        return False
    if text.startswith((">>>", "$ ", "#include", "def ", "class ", "import ")):
        return False
    return len(re.findall(r"\b[a-z]{3,}\b", text)) >= MIN_WORDS // 2


def is_heldout(passage: str) -> bool:
    """Deterministic split: sha256 of the UTF-8 passage, first 8 hex digits modulo 100."""
    return int(hashlib.sha256(passage.encode("utf-8")).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def extract(html_root: Path) -> list[tuple[str, str]]:
    """(page, passage) pairs in page order (sorted relative paths), duplicates removed."""
    pages = sorted(p for p in html_root.rglob("*.html")
                   if not SKIP_PAGES.search(p.relative_to(html_root).as_posix())
                   and not p.relative_to(html_root).as_posix().startswith(("_", "whatsnew/changelog")))
    seen: set[str] = set()
    out = []
    for page in pages:
        parser = _ParagraphParser()
        parser.feed(page.read_text(encoding="utf-8"))
        parser.close()
        for raw in parser.paragraphs:
            text = clean(raw)
            if not looks_like_prose(text) or text in seen:
                continue
            seen.add(text)
            out.append((page.relative_to(html_root).as_posix(), text))
    return out


def package_version(deb: Path | None) -> str:
    if deb is not None:
        return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                              capture_output=True, text=True).stdout.strip()
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3.11-doc"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--deb", type=Path, help="python3.11-doc .deb file (from apt-get download)")
    source.add_argument("--html", type=Path, help="an extracted/installed .../python3.11/html folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.deb is not None:
            subprocess.run(["dpkg-deb", "-x", str(args.deb), tmp], check=True)
            html_root = Path(tmp) / HTML_IN_DEB
        else:
            html_root = args.html
        if not (html_root / "index.html").is_file():
            parser.error(f"{html_root} has no index.html: is it the python3.11-doc html folder?")
        passages = extract(html_root)

    train = [text for _, text in passages if not is_heldout(text)]
    heldout = [text for _, text in passages if is_heldout(text)]
    files = {"train.txt": "".join(t + "\n" for t in train), "heldout.txt": "".join(t + "\n" for t in heldout)}
    for name, text in files.items():
        write_atomic(args.out / name, text)
    manifest = {
        "source": {"package": "python3.11-doc", "version": package_version(args.deb),
                   "files": f"/{HTML_IN_DEB}/**/*.html (indexes, search, license pages and changelog skipped)",
                   "license": "PSF License Version 2 (documentation); examples additionally 0BSD"},
        "split": f"sha256(passage)[:8] as int % 100 < {HELDOUT_PERCENT} -> heldout",
        "pages": len({page for page, _ in passages}),
        "files": {name: {"passages": text.count("\n"), "bytes": len(text.encode("utf-8")),
                         "words": len(text.split()),
                         "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
                  for name, text in files.items()},
    }
    write_atomic(args.out / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
