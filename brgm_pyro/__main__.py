"""``python -m brgm_pyro ...`` = ``brgm ...`` (also what ``torchrun -m brgm_pyro reconstruct ...`` runs)."""

from brgm_pyro.cli import main

if __name__ == "__main__":
    main()
