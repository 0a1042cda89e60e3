"""``python -m proxy.dispatcher``: the companion dispatcher without the ``llm-throttle`` script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
