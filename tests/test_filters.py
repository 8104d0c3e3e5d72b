"""escale.filters: pattern syntax, the file/folder rules, and use with listFiles."""
from __future__ import annotations

import pytest

from escale.access import AccessController
from escale.filters import Filter, compile_pattern


def test_empty_filter_accepts_everything_but_state():
    f = Filter()
    assert f.is_empty
    for path in ("a", ".hidden", "a/b/c.txt", "sub/.escale/x", ".escalefoo/x"):
        assert f.accepts_file(path), path
    for path in (".escale/x", ".escale/a/b", ".ESCALE/x", ".escale"):
        assert not f.accepts_file(path), path
    assert f.accepts_dir("") and f.accepts_dir("a/b")
    assert not f.accepts_dir(".escale") and not f.accepts_dir(".escale/sub")
    assert not f.may_descend(".escale")


def test_glob_patterns_match_the_whole_basename():
    f = Filter(include=["*.txt", "report-??.pdf"])
    assert f.accepts_file("a.txt") and f.accepts_file("deep/dir/b.txt")
    assert f.accepts_file("report-01.pdf")
    assert not f.accepts_file("a.txt.bak")  # full match
    assert not f.accepts_file("report-001.pdf")
    assert not f.accepts_file("A.TXT")  # case-sensitive
    assert not f.accepts_file("txt/readme")  # the folder is not the basename


def test_regex_patterns_are_anchored_at_start_only():
    f = Filter(include=["/foo"])
    assert f.accepts_file("foo") and f.accepts_file("foobar") and f.accepts_file("d/foo.c")
    assert not f.accepts_file("barfoo")
    g = Filter(exclude=["/.*~$/"])  # trailing slash stripped
    assert not g.accepts_file("notes~") and g.accepts_file("notes")
    h = Filter(include=[r"/[0-9]+\.log$"])
    assert h.accepts_file("12.log") and not h.accepts_file("a12.log")


def test_exclude_wins_over_include():
    f = Filter(include=["*.txt"], exclude=["secret*"])
    assert f.accepts_file("a.txt")
    assert not f.accepts_file("secret.txt")
    assert not f.accepts_file("a.doc")


def test_filetype():
    f = Filter(filetype=["txt", ".PDF", "*.tar.gz"])
    assert f.accepts_file("a.txt") and f.accepts_file("b.pdf") and f.accepts_file("C.Pdf")
    assert f.accepts_file("x/archive.tar.gz")
    assert not f.accepts_file("a.gz") and not f.accepts_file("atxt")
    assert not f.accepts_file(".txt")  # a dot-file named after the extension has none
    both = Filter(filetype=["txt"], include=["Makefile"])  # include OR filetype
    assert both.accepts_file("a.txt") and both.accepts_file("Makefile")
    assert not both.accepts_file("main.c")
    with pytest.raises(ValueError):
        Filter(filetype=["."])


def test_exclude_directory_matches_components_and_ancestors():
    f = Filter(exclude_directory=["build", "src/gen", "/tmp"])
    assert not f.accepts_file("build/x")
    assert not f.accepts_file("build/sub/y")
    assert not f.accepts_file("src/build/z")
    assert not f.accepts_file("src/gen/a/b")
    assert f.accepts_file("gen/c")
    assert f.accepts_file("builder/x")  # glob: whole component
    assert not f.accepts_file("tmpfiles/x")  # regex: anchored at start only
    assert f.accepts_file("a/b/c") and f.accepts_file("top")
    assert not f.may_descend("src/build") and f.may_descend("src")


def test_include_directory():
    f = Filter(include_directory=["docs", "src/lib*"])
    assert f.accepts_file("docs/a.md") and f.accepts_file("docs/deep/b.md")
    assert f.accepts_file("project/docs/c.md")  # a component matches
    assert f.accepts_file("src/library/x.py")
    assert not f.accepts_file("src/main.py")
    assert not f.accepts_file("top.txt")  # top level matches no folder pattern
    assert not f.accepts_dir("") and f.accepts_dir("docs")
    assert f.may_descend("src")  # src/lib* lies below: the crawl must go in


def test_include_and_exclude_directory_together():
    f = Filter(include_directory=["docs"], exclude_directory=["drafts"])
    assert f.accepts_file("docs/a")
    assert not f.accepts_file("docs/drafts/b")
    assert not f.accepts_file("drafts/docs/c")


def test_invalid_regex_names_the_pattern():
    with pytest.raises(ValueError, match=r"'/\(unclosed'"):
        Filter(include=["/(unclosed"])
    with pytest.raises(ValueError, match=r"/\[z-a\]"):
        Filter(exclude_directory=["/[z-a]"])
    with pytest.raises(ValueError):
        Filter(include=[3])  # type: ignore[list-item]


def test_pattern_lists_are_normalised():
    f = Filter(include="*.txt", exclude=["", "  ", " *.bak "])  # type: ignore[arg-type]
    assert f.include == ["*.txt"] and f.exclude == ["*.bak"]
    assert f.accepts_file("a.txt") and not Filter(exclude=" *.bak ").accepts_file("x.bak")  # type: ignore[arg-type]
    assert Filter(include=None).is_empty  # type: ignore[arg-type]
    assert Filter(include=["*.txt"]) == Filter(include=["*.txt"])


def test_compile_pattern():
    assert compile_pattern("a*")("abc") and not compile_pattern("a*")("bac")
    assert compile_pattern("/")("anything")  # an empty regex matches all
    assert compile_pattern("/a\\/")("a/")  # an escaped trailing slash is kept


def test_select_and_listfiles_integration(tmp_path):
    root = tmp_path / "sync"
    for rel in ("a.txt", "b.bin", "build/c.txt", "src/d.txt", "src/build/e.txt",
                ".escale/state", "src/.escale/f.txt"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    f = Filter(filetype=["txt"], exclude_directory=["build"])
    assert f.select(["a.txt", "b.bin", "build/c.txt", ".escale/x.txt"]) == ["a.txt"]
    with AccessController("r", root) as ac:
        listed = ac.listFiles(dirname=f.may_descend)
        assert "build/c.txt" not in listed and ".escale/state" not in listed
        assert f.select(listed) == ["a.txt", "src/.escale/f.txt", "src/d.txt"]
