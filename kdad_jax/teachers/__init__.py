"""Teachers: pretrained backbones (``backbones``), torchvision/EfficientNet-Lite conversion
(``convert``, ``state_dict``), teacher pretraining jobs (``pretrain``) and the distilled teachers
shipped in this folder (``shipped``: ``builtin:<name>`` in ``config.teacher.checkpoint``)."""
