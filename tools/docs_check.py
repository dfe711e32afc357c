"""Render every docs page to HTML without Quarto and check it; screenshot three pages.

`make docs-check` runs `tools/proc_nbs.py` (nbdev-proc-nbs: what Quarto would read), then this script:

1. every notebook in nbs/ has its processed page in _proc/ (nbdev-proc-nbs drops a page whose cells fail);
2. each page converts to HTML with nbconvert (after dropping the cell keys nbformat does not know), into _docs_check/;
3. each public class and function of a module (its `__all__`) has, on its notebook's page, a heading, a signature and text;
4. no signature or parameter table names a type as `__main__.Entry`, or as a bare "Union" or "Literal";
5. each display cell in nbs/ (a visible code cell that ends in an expression, other than an assertion) stores its
   output, so that the site shows it;
6. headless Chromium screenshots the index, Checkpoint and journal pages into _docs_check/*.png (Debian's `chromium`,
   installed with apt when missing and possible).

Exit 1 with the list of problems if any check fails.
"""
import ast
import importlib
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, PROC, OUT = ROOT / "nbs", ROOT / "_proc", ROOT / "_docs_check"
CELL_KEYS = {"id", "cell_type", "metadata", "source", "outputs", "execution_count", "attachments"}
SCREENSHOTS = {"index": "index", "Checkpoint": "15_checkpoint", "journal": "05_journal"}
NOT_DISPLAY = re.compile(r"^(test_\w*|assert\w*|close)$")  # calls that show nothing by design


def notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if not any(part.startswith(("_", ".")) for part in
                                                                 p.relative_to(folder).parts))


def to_html(page: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    data = json.loads(page.read_text())
    for cell in data["cells"]:
        for key in set(cell) - CELL_KEYS:
            del cell[key]
        cell["metadata"].pop("execution", None)  # execnb's timings, which nbformat's schema wants as strings
        if cell["cell_type"] != "code":
            cell.pop("outputs", None), cell.pop("execution_count", None)
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.reads(json.dumps(data), as_version=4))
    return html


def directives(source: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#\|\s*([\w-]+)", source, flags=re.M)}


def is_display(source: str) -> bool:
    "A visible code cell whose last statement is an expression that shows something."
    if directives(source) & {"hide", "export", "exporti", "exports", "eval"}:
        return False
    try:
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith(("%", "!"))))
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    value = tree.body[-1].value
    if isinstance(value, ast.Call):
        name = ast.unparse(value.func).split(".")[-1]
        return not NOT_DISPLAY.match(name)
    return True


def missing_outputs() -> list[str]:
    problems, shown = [], 0
    for nb in notebooks(NBS):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and is_display(source):
                shown += 1
                if not cell.get("outputs"):
                    problems.append(f"{nb.relative_to(NBS)}: display cell {cell.get('id')} has no stored output: "
                                    f"{source.splitlines()[-1][:80]!r}")
    print(f"display cells: {shown}, with stored output: {shown - len(problems)}")
    return problems


def public_names() -> dict[str, list[str]]:
    "notebook stem -> the names its module exports."
    from lamin_lightning.testing import isolate_settings

    isolate_settings()  # importing the modules imports lamindb: never with the user's settings
    found = {}
    for nb in notebooks(NBS):
        sources = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
        match = re.search(r"#\|\s*default_exp\s+(\S+)", sources)
        if match:
            module = importlib.import_module(f"lamin_lightning.{match.group(1)}")
            found[nb.stem] = [name for name in getattr(module, "__all__", [])  # what nbdev documents: not constants
                              if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))]
    return found


def undocumented(stem: str, html: str, names: list[str]) -> list[str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    headings = soup.find_all(re.compile("^h[1-6]$"))
    problems = []
    for name in names:
        heading = next((h for h in headings if h.get_text(strip=True).rstrip("¶") in (name, name.split(".")[-1])),
                       None)
        if heading is None:
            problems.append(f"{stem}: {name} has no heading")
            continue
        section = []
        for sibling in heading.find_all_next():
            if re.match("^h[1-6]$", sibling.name or "") and sibling is not heading:
                break
            section.append(sibling)
        code = " ".join(s.get_text() for s in section if s.name in ("pre", "code"))
        text = " ".join(s.get_text(" ", strip=True) for s in section if s.name in ("p", "li", "td"))
        if not re.search(rf"\b(def|class)\s+{re.escape(name)}\b|\b{re.escape(name)}\s*\(", code):
            problems.append(f"{stem}: {name} has no signature")
        if len(text.split()) < 3:
            problems.append(f"{stem}: {name} has no text")
    return problems


UNREADABLE = re.compile(r"__main__\.\w+|\b(?:Union|Optional|Literal)\b(?!\[)")  # fastcore's spelling of types


def unreadable_types(stem: str, html: str) -> list[str]:
    """Signatures, parameter tables and other outputs that name a type as `__main__.Entry` (or show an object as
    `<__main__.Broken>`), or a type as a bare `Union` / `Literal`; the code cells themselves may say anything."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    shown = [s for s in soup.select(".jp-OutputArea pre, .jp-OutputArea td, .output pre, .output td")]  # not code cells
    found = {m.group() for s in shown for m in UNREADABLE.finditer(s.get_text())}
    return [f"{stem}: a type is shown as {name!r}" for name in sorted(found)]


def chromium() -> str | None:
    for command in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):  # the last: CI runners
        if path := shutil.which(command):
            return path
    if shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium >/dev/null", shell=True, check=False)
    return shutil.which("chromium")


def screenshot(browser: str, page: Path, image: Path) -> bool:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={image}",
               "--window-size=1280,2400", page.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    return image.exists() and image.stat().st_size > 0


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    problems = []
    pages = {}
    for nb in notebooks(NBS):
        page = PROC / nb.relative_to(NBS)
        if not page.exists():
            problems.append(f"{nb.relative_to(NBS)}: nbdev-proc-nbs made no page (a cell it runs failed?)")
            continue
        html = to_html(page)
        target = OUT / nb.relative_to(NBS).with_suffix(".html")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html)
        pages[nb.stem] = (html, target)
    print(f"pages rendered: {len(pages)} of {len(notebooks(NBS))}")
    names = public_names()
    for stem, exported in names.items():
        if stem in pages:
            problems += undocumented(stem, pages[stem][0], exported)
    for stem, (html, _) in pages.items():
        problems += unreadable_types(stem, html)
    print(f"public names checked: {sum(len(v) for v in names.values())}")
    problems += missing_outputs()
    browser = chromium()
    if browser is None:
        problems.append("no chromium to take screenshots with (apt-get install chromium)")
    else:
        for label, stem in SCREENSHOTS.items():
            image = OUT / f"{stem}.png"
            if stem in pages and screenshot(browser, pages[stem][1], image):
                print(f"screenshot of the {label} page: {image.relative_to(ROOT)}")
            else:
                problems.append(f"no screenshot of the {label} page")
    for problem in problems:
        print("PROBLEM:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
