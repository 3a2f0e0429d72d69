"""``python -m headstart``: the same command as the ``headstart`` console script."""

from headstart.cli import main

if __name__ == "__main__":
    main()
