"""Stage 01 — data: image reading, phantoms, the sources (Kermany folders, PneumoniaMNIST, phantoms),
patient-wise splits and the leak guard, augmentation."""
from utils.data.sources import *  # noqa: F401,F403  (temporary: narrowed below)
