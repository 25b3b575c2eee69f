"""``python -m kdad_jax.serve DIR [DIR ...] [--host 127.0.0.1] [--port 8765]``: serve exported
detectors (``--mode=export`` folders, either format) over HTTP; see ``kdad_jax.serve.service``.
Needs the ``serve`` extra (``pip install -e '.[serve]'``: FastAPI, uvicorn)."""

import argparse
import sys


def _arguments(argv):
    from kdad_jax.serve.service import Options
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m kdad_jax.serve", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", metavar="DIR", help="export folders (W/export/<category>)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="images a model runs together")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long a model waits for more images after the first")
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size,
                        help="images waiting per model before requests get 503")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb)
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    args = parser.parse_args(argv)
    for name in ("max_batch", "queue_size", "max_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args, Options(args.max_batch, args.max_wait_ms, args.queue_size, args.max_upload_mb,
                         args.max_pixels)


def main(argv=None) -> int:
    args, options = _arguments(argv)
    try:
        import uvicorn

        import fastapi  # noqa: F401
    except ImportError:
        print("error: the service needs FastAPI and uvicorn: pip install -e '.[serve]'", file=sys.stderr)
        return 2
    from kdad_jax.serve import service
    try:
        models = service.load_models(args.folders)
    except (ValueError, ImportError) as e:  # ArtifactError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {', '.join(models)} on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(service.make_app(models, options), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
