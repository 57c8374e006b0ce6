"""`dtl-ray serve`: a run's model behind HTTP (Ray Serve), until interrupted."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = "serve a run's model over HTTP with Ray Serve (an image in, class and p_target out)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run's folder (local or s3://)")
    _common.add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the HTTP port")
    p.add_argument("--route", default="/", help="the route to POST images to")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="requests answered in one forward pass, at most")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the serving replica")
    p.add_argument("--gpu", action="store_true", help="serve on a GPU")


def main(args: argparse.Namespace) -> int:
    import time

    from ray import serve

    from dtl_ray.inference import predict
    from dtl_ray.inference import serve as serving
    from dtl_ray.raykit import connect

    predict.run_files(args.run_dir, args.model)  # not a run, or no such model: one line
    connect.ensure_ray()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(serving.application(args.run_dir, args.model, args.max_batch_size,
                                  num_cpus=args.num_cpus, use_gpu=args.gpu),
              name="dtl-ray", route_prefix=args.route)
    print(f"dtl-ray: serving model '{args.model}' of {args.run_dir} at "
          f"http://{args.host}:{args.port}{args.route} (POST an image; Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
