"""``python -m restorekit`` (also what ``torchrun -m restorekit`` runs); importing it runs nothing."""

from .cli import main

if __name__ == "__main__":
    main()
