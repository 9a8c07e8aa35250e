"""clup: source-free domain adaptation of facial expression recognition (CluP)."""

import os

# albumentations looks for a newer release online at import; clup never reaches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
