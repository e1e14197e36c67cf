"""Stage `params`: check the whole of params.yaml, ahead of every other stage.

Usage: python -m stages.params --params params.yaml --out data/params.ok
Reads params: all of params.yaml (dvc.yaml lists the file whole), so that any `dvc exp run -S ...`
runs this stage: every section and every `models` entry, the unselected ones too, is read into its
typed dataclass (prefbench.config.load_params), and a bad value fails the run that set it, in one
line naming the key, before any other stage runs or DVC removes its outputs. An unknown `model`
lists the valid ones. Writes --out with a fixed text, so that the stages after it (which list it
as a dependency, to run after it) are not re-run by a change that does not concern them.
"""

from __future__ import annotations

import argparse

from prefbench.cli import run
from prefbench.config import load_params
from prefbench.files import atomic_path

OK = "params.yaml is valid (stages/params.py)\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="file written when the params are valid (always the same text)")
    args = parser.parse_args()
    params = load_params(args.params)
    with atomic_path(args.out) as path:  # whole or absent, as every stage output (prefbench.files)
        path.write_text(OK)
    print(f"params: {args.params} valid; model {params.model} of {', '.join(sorted(params.models))}")


if __name__ == "__main__":
    run(main)
