"""`nbdev-proc-nbs` without its Quarto check: everything Quarto's input needs, made in `_proc/`.

nbdev's `nbdev-proc-nbs` first makes sure Quarto is installed, and offers to install it (`sudo touch .installing`,
then a download) when it is not: here it cannot be, so `make docs-check` printed "Quarto is not installed. We will
download and install it for you … Cancelled." This runs the same steps as nbdev's `_pre_docs` after that check, but for `nbdev_sidebar`: `nbs/sidebar.yml` is kept
by hand (it orders the pages).

    python tools/proc_nbs.py   # as `nbdev-proc-nbs`, from any folder of the project
"""
import os

import nbdev.doclinks
from nbdev.config import get_config
from nbdev.quarto import refresh_quarto_yml
from nbdev.serve import proc_nbs


def main() -> None:
    cfg = get_config()
    os.chdir(cfg.config_path)  # as nbdev: later steps read the configuration from the working directory
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    proc_nbs(str(cfg.nbs_path))


if __name__ == "__main__":
    main()
