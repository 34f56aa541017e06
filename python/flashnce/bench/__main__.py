"""``python -m flashnce.bench``: the same as the ``flashnce-bench`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
