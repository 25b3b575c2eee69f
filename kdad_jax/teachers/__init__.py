"""Teachers: pretrained backbones (``backbones``), torchvision/EfficientNet-Lite conversion
(``convert``, ``state_dict``) and the distilled teachers
shipped in this folder (``shipped``: ``builtin:<name>`` in ``config.teacher.checkpoint``).
Distilling a teacher is a job: ``kdad_jax/jobs/pretrain.py``."""
