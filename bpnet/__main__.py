"""``python -m bpnet`` runs the command line (see :mod:`bpnet.cli`)."""
from .cli import main

raise SystemExit(main())
