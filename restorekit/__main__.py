"""``python -m restorekit`` (also what ``torchrun -m restorekit`` runs)."""

from .cli import main

main()
