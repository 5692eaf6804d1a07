"""``python -m marginkit``: the command line (same as the ``marginkit`` script)."""

from .cli import main

if __name__ == "__main__":
    main()
