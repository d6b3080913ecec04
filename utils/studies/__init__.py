"""Studies built from the stages (notebooks 03, 06, 08, 09): they may use every layer below — data, training,
evaluation, explanations, deployment timing and the rebuild chain of :mod:`utils.stages`.

* :mod:`utils.studies.phases` — phase 1 vs phase 2 on validation, and training all at once without the warm-up
  (notebook 03);
* :mod:`utils.studies.failures` — the false negatives and where their maps look (notebook 06);
* :mod:`utils.studies.shortcut` — a planted marker, a model that learns it, and whether the map says so (notebook 08);
* :mod:`utils.studies.architectures` — ResNet-18 vs ViT-Tiny on the same test set (notebook 09).
"""
