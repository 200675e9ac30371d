"""Write a SYNTHETIC corpus of spec-lite files + catalogue (archive layout) for ``build-shards``.

    python -m etl.synthetic population --n 20000 --data-dir DATA [--seed 0] [--release dr16]
    python -m etl.synthetic from-real --n 50000 --data-dir DATA [--seed 0] [--release dr16]

``population`` needs the population extra (bagpipes); see ``etl/synthetic/__init__.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from etl.synthetic.from_real import BANNER, make_corpus


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m etl.synthetic", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="kind", required=True)
    kinds = {
        "population": "bagpipes galaxies with known parameters, real SDSS noise and masks",
        "from-real": "the bundled real galaxies moved to new redshifts",
    }
    for kind, text in kinds.items():
        p = sub.add_parser(kind, help=text, description=f"SYNTHETIC corpus: {text}")
        p.add_argument(
            "--data-dir", type=Path, required=True, help="files go to DATA/<release>/..."
        )
        p.add_argument("--n", type=int, default=20000, help="number of files (default 20000)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--release", default="dr16", help="release manifest (default dr16)")
        p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kind == "population":
        from etl.synthetic.population_corpus import BANNER as POP_BANNER
        from etl.synthetic.population_corpus import make_population

        print(POP_BANNER)
        make_population(args.data_dir, args.n, args.seed, args.release, args.processes)
    else:
        print(BANNER)
        make_corpus(args.data_dir, args.n, args.seed, args.release, args.processes)


if __name__ == "__main__":
    main()
