"""kdad_jax entry point: flags, one-line errors, one call into ``kdad_jax.jobs.run`` (or predict).

    python -m kdad_jax.main --config=configs/efficientad.py:demo --workdir=/tmp/run [--mode=train|eval]

The logic lives in importable modules (``kdad_jax.jobs.run.run`` can be called from a notebook).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kdad_jax.training import parallel
from kdad_jax.errors import UserError, disk_error_line, one_line
from kdad_jax.report import describe
from kdad_jax.jobs.run import run
from kdad_jax.jobs import predict

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/efficientad.py:demo.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export", "predict", "describe"],
                          "train: train (or resume) then evaluate; eval: evaluate the latest checkpoint; "
                          "export: evaluate, then write W/export/<category>/ for kdad_jax.serve.deploy; "
                          "predict: score --input images into --output; "
                          "describe: print the resolved config with each key's help (no --workdir).")
_INPUT = flags.DEFINE_string("input", None, "predict: image files and/or folders, comma-separated.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: folder for scores.csv and overlays.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "predict: image-score threshold (default: "
                                "the one evaluation saved in W/thresholds.json).")
_SAVE_MAPS = flags.DEFINE_bool("save_maps", False, "predict: also write the raw maps as .npy.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "host:port of process 0 for a multi-process job started by hand "
    "(SLURM, TPU VMs and Open MPI are detected without it).")
_EXPECT_PLATFORM = flags.DEFINE_enum(
    "expect_platform", None, ["cpu", "gpu", "tpu"], "Stop with one line unless JAX's backend is "
    "this one (the launch scripts set it: a CPU-only jax on a GPU node would otherwise run slowly).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")


def _parse_flags(argv):
    """absl's parser, with config mistakes (unknown key, bad preset, bad value) as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        print(f"error: invalid config override: {one_line(str(e))}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is not None and _MODE.value == "describe":
        path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
        print(describe.describe(_CONFIG.value, path))
        return
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO; progress has its own bar
    try:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        parallel.check_platform(_EXPECT_PLATFORM.value)
        if _MODE.value == "predict":
            if not _INPUT.value or not _OUTPUT.value:
                raise app.UsageError("--mode=predict needs --input and --output")
            predict.run(_CONFIG.value, _WORKDIR.value, _INPUT.value, _OUTPUT.value, _THRESHOLD.value,
                        _SAVE_MAPS.value)
        else:
            run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except UserError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a write the files module does not wrap (a library's own files)
        if disk_error_line(e) is None:
            raise
        print(f"error: {disk_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except parallel.Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(143)  # 128 + SIGTERM, as if the notice had ended the process: launchers requeue


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
