"""README.md from nbs/index.ipynb, as `nbdev-readme` would make it without Quarto: markdown cells as they are, each
shown code cell in a python fence, and its stored output (text) in a plain fence. Hidden cells are left out.

    python tools/readme.py          # write README.md
    python tools/readme.py --check  # exit 1 if README.md differs (tests/test_readme.py does the same)
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hidden(source: str) -> bool:
    return any(line.strip() in ("#| hide", "#|hide") for line in source.splitlines())


def output_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            parts.append("".join(output["text"]))
        elif output.get("output_type") in ("execute_result", "display_data") and "text/plain" in output.get("data", {}):
            parts.append("".join(output["data"]["text/plain"]))
    return "\n".join(p.rstrip("\n") for p in parts)


def render(notebook: Path = ROOT / "nbs" / "index.ipynb") -> str:
    blocks = []
    for cell in json.loads(notebook.read_text())["cells"]:
        source = "".join(cell["source"]).strip("\n")
        if cell["cell_type"] == "markdown":
            blocks.append(source)
        elif cell["cell_type"] == "code" and not hidden(source):
            blocks.append(f"```python\n{source}\n```")
            if text := output_text(cell):
                blocks.append(f"```\n{text}\n```")
    return "\n\n".join(blocks) + "\n"


def main() -> None:
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        same = readme.read_text() == render()
        print("README.md matches nbs/index.ipynb" if same else "README.md differs from nbs/index.ipynb: make readme")
        sys.exit(0 if same else 1)
    readme.write_text(render())


if __name__ == "__main__":
    main()
