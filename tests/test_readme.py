"""README.md is nbs/index.ipynb as text: the same prose, the same quickstart code and the same stored outputs."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from readme import render  # noqa: E402


def fences(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)\n```$", text, flags=re.S | re.M)


def test_readme_is_the_index_page() -> None:
    readme, page = (ROOT / "README.md").read_text(), render()
    quickstart = lambda text: text[text.index("## Quickstart"):text.index("## Documentation")]  # noqa: E731
    assert fences(quickstart(readme), "python") == fences(quickstart(page), "python"), "quickstart code differs"
    assert fences(quickstart(readme), "") == fences(quickstart(page), ""), "quickstart outputs differ"
    assert fences(quickstart(page), ""), "the index page stores no quickstart output"
    assert readme == page, "README.md differs from nbs/index.ipynb: run `make readme`"
