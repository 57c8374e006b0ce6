"""`dtl-ray export`: a run's model as a file that loads without dtl-ray (torch.export, ONNX
or TorchScript)."""

from __future__ import annotations

import argparse

from dtl_ray.commands import _common

HELP = ("write a run's model as a torch.export program, ONNX or TorchScript that loads "
        "without dtl-ray (class names and preprocessing inside)")
FORMATS = ("export", "onnx", "torchscript")  # inference.export.FORMATS, without its imports


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run's folder (local or s3://)")
    p.add_argument("--out", required=True,
                   help="output file (local or s3://), e.g. model.pt2, model.onnx, model.pt")
    p.add_argument("--format", default="export", choices=FORMATS,
                   help="export: a torch.export program (torch.export.load); onnx: an ONNX "
                   "model with a dynamic batch (onnxruntime; pip install 'dtl-ray[export]'); "
                   "torchscript: torch.jit.load (deprecated by torch 2.14)")
    _common.add_model(p)


def main(args: argparse.Namespace) -> int:
    from dtl_ray.inference import export

    info = export.export(args.run_dir, args.out, args.model, args.format)
    print(f"exported model '{args.model}' ({info['backbone']}, {len(info['classes'])} "
          f"classes, input {info['input']}) as {args.format} -> {args.out}")
    return 0
