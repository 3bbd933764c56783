"""Entry point of the packaged application (the MAP runs ``python <app folder>``): :func:`app.main`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
