"""The documentation: README stays a short front door whose links lead somewhere, every
module is in the API reference, and the Sphinx site builds with warnings as errors."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 400

FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    """The Markdown links and images of ``path`` that name a file (not a URL, not an anchor
    of the same page), outside fenced code, without their ``#anchor``."""
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def test_readme_links_resolve_into_docs():
    links = relative_links(README)
    missing = [t for t in links if not (README.parent / t).is_file()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    into_docs = [t for t in links if t.startswith("docs/")]
    assert len(into_docs) >= 5, "README links into the guides under docs/"
    for page in ["docs/guides/training.md", "docs/benchmarks/results.md", "docs/api/index.md"]:
        assert page in into_docs, f"README does not link to {page}"


def test_guide_links_resolve():
    missing = [(p.relative_to(REPO).as_posix(), t) for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts
               for t in relative_links(p) if not (p.parent / t).exists()]
    assert not missing, f"links to files that do not exist: {missing}"


def test_every_module_is_in_the_api_reference():
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", "\n".join(
        p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.rst")), re.MULTILINE))
    modules = set()
    for path in (REPO / "recsys_jax").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if any(p.startswith("_") for p in parts[1:]) and parts[1:] != ["models", "_common"]:
            continue  # private modules (_version, ...), except the models' shared helpers
        modules.add(".".join(parts))
    assert not sorted(modules - documented), "modules missing from docs/api/*.rst"


def test_the_public_face_is_listed():
    import recsys_jax

    page = (DOCS / "api" / "package.rst").read_text(encoding="utf-8")
    missing = [n for n in recsys_jax.__all__ if not n.startswith("_") and f"``recsys_jax.{n}``" not in page]
    assert not missing, f"docs/api/package.rst does not list {missing}"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="the docs extra is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"sphinx-build -W failed:\n{done.stderr[-6000:]}"
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "benchmarks" / "results.html").is_file()
