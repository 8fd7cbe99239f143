"""``python -m node`` is the same command as ``metanode``."""

from node.cli.main import main

if __name__ == "__main__":
    main()
