"""The training core: the generic loop (``train``: resume, preemption, NaN checks, progress), many
categories as one program (``stacking``), Orbax checkpoints (``checkpoint``), the device mesh and
``jax.distributed`` (``parallel``), the run folder and its config guard (``workdir``) and the
metric writer (``logs``: metrics.jsonl, TensorBoard, the environment). It names no method and
imports neither reports nor jobs."""
