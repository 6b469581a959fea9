"""Docs and code state the present: no issue numbers, no "this pass", no developer names. History lives in git;
a reader of docs/, the README, or a comment or docstring should not need it."""

from pathlib import Path
import re

REPO = Path(__file__).resolve().parents[1]

HISTORY = re.compile(
    r"\bissue\s*#?\s*\d+"                    # "issue 16", "issue #16", "Issue 22's"
    r"|\bissue\s*#"                           # "issue #"
    r"|\bstop\s+\d+\b"                        # "stop 17"
    r"|\b(?:before\s+)?this\s+pass\b"         # "this pass", "before this pass"
    r"|\b(?:second|third|fourth|fifth)\s+pass\b"
    r"|\(developer\s|\bdeveloper\s+\w+(?:'s\b|\))"  # "(developer core)", "developer wire's change"
    r"|\bhas\s+not\s+landed\b",
    re.IGNORECASE)


def checked_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for folder in ("geoloc_ros", "test", "tools", "launch"):
        files += sorted((REPO / folder).rglob("*.py"))
    this = Path(__file__).resolve()
    return [f for f in files if f.resolve() != this and "__pycache__" not in f.parts]


def history_words(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in HISTORY.finditer(text)]


def test_the_pattern_catches_history_and_spares_the_present():
    for bad in ("(issue 16)", "Issue 22's targets", "see issue #4", "stop 17", "before this pass 21.2 ms",
                "issue 20's second pass", "(developer core)", "developer wire's change", "has not landed yet"):
        assert history_words(bad), bad
    for fine in ("a path a developer recognises", "the issue is silent", "one pass over the data", "stops 3 frames"):
        assert not history_words(fine), fine


def test_docs_readme_and_code_state_the_present():
    found = [f"{f.relative_to(REPO)}:{line}: {word!r}"
             for f in checked_files() for line, word in history_words(f.read_text(encoding="utf-8"))]
    assert not found, "history words (say what is, not when or by whom):\n" + "\n".join(found)
