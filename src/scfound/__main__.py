"""``python -m scfound`` runs the osmFISH imputation demo."""

from scfound._demo import main

main()
