"""``python -m eo_jepa`` (and ``torchrun -m eo_jepa train ...``) runs the CLI."""

from eo_jepa.cli import main

if __name__ == "__main__":
    main()
