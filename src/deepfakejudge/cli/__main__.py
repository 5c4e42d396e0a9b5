"""`python -m deepfakejudge.cli …` (what `accelerate launch -m deepfakejudge.cli train …` runs)."""

from . import main

raise SystemExit(main())
