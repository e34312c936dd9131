"""Command-line interface: ``brgm <command>``.

Each command module registers itself on :data:`brgm_pyro.cli.app.app`; import it here (one line).
"""

from brgm_pyro.cli.app import app

# Command modules (one import per module; the import registers the commands).
from brgm_pyro.cli import convert  # noqa: F401,E402
from brgm_pyro.cli import demo, reconstruct  # noqa: F401,E402
from brgm_pyro.cli import diagnose  # noqa: F401,E402
from brgm_pyro.cli import train  # noqa: F401,E402
from brgm_pyro.cli import train_prior  # noqa: F401,E402
from brgm_pyro.cli import fit_discrepancy  # noqa: F401,E402
from brgm_pyro.cli import compare  # noqa: F401,E402


def main() -> None:
    app()


__all__ = ["app", "main"]
