"""`make docs-check` catches what it promises to: a public name without heading, signature or text, and a display
cell without its stored output (tools/docs_check.py, checked here on small pages)."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import docs_check  # noqa: E402

PAGE = """<h3 id="good">good</h3><pre><code>def good(x:int)-&gt;int:</code></pre><p>Doubles <code>x</code> exactly.</p>
<h3 id="bare">bare</h3><pre><code>def bare()</code></pre>
<h3 id="nosig">nosig</h3><p>Explains something here.</p>"""


def test_undocumented_names_are_reported() -> None:
    problems = docs_check.undocumented("page", PAGE, ["good", "bare", "nosig", "missing"])
    assert problems == ["page: bare has no text", "page: nosig has no signature", "page: missing has no heading"]


def test_unreadable_types_are_reported() -> None:
    page = """<pre><code>x = typing.Union  # a code cell: not checked</code></pre><div class="jp-OutputArea">
    <pre><code>def f(entry:__main__.Entry, dirpath:str | Path | None=None, mode:Literal["min"]='min')</code></pre>
    <table><tr><td>save_last</td><td>Union</td><td>None</td></tr><tr><td>mode</td><td>Literal</td></tr></table>
    <p>Union of the two, in prose, is fine.</p></div>"""
    assert docs_check.unreadable_types("page", page) == [
        "page: a type is shown as 'Literal'", "page: a type is shown as 'Union'",
        "page: a type is shown as '__main__.Entry'"]


def test_display_cells_are_told_from_the_rest() -> None:
    assert docs_check.is_display("table.head()")
    assert docs_check.is_display("x = 1\nx, x + 1")
    assert docs_check.is_display("show_doc(checkpoints)")
    assert not docs_check.is_display("test_eq(1, 1)")  # an assertion shows nothing
    assert not docs_check.is_display("plt.close(fig)")
    assert not docs_check.is_display("x = 1")
    assert not docs_check.is_display("#| hide\ntable.head()")
    assert not docs_check.is_display("#| export\ndef f(): ...")


def test_notebooks_process_for_quarto(tmp_path: Path) -> None:
    """`nbdev-proc-nbs` (as `tools/proc_nbs.py`: all that Quarto's input needs) runs every notebook's import and
    `show_doc` cells without error, and without offering to install Quarto (with `sudo`)."""
    import os
    import subprocess

    root = Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMIN_")} | {"LAMIN_SETTINGS_DIR": str(tmp_path)}
    args = re.search(r"\$\(BIN\)/(python tools/proc_nbs.py|nbdev-proc-nbs)", (root / "Makefile").read_text()).group(1)
    done = subprocess.run([str(Path(sys.executable).parent / args.split()[0]), *args.split()[1:]], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Quarto" not in done.stdout + done.stderr and not (root / ".installing").exists(), done.stdout[-2000:]
    assert (root / "_proc" / "15_checkpoint.ipynb").exists()
