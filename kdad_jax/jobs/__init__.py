"""The jobs above the library: ``run`` (per category read → train → evaluate → report / export),
``validate`` (the whole config checked before any work), ``predict`` (score image files with a
workdir's checkpoint) and ``pretrain`` (teacher pretraining: a distilled teacher file)."""
