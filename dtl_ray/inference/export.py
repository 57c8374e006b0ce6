"""`dtl-ray export`: a run's model as a file that loads without dtl-ray, in the formats
PyTorch and its deployment tools take.

Every format holds one program: uint8 RGB images (N, S, S, 3) at the run's image size S in,
class probabilities (N, K) out (normalisation inside; N is dynamic); and the same metadata
(class names in output order, the image size, how to resize, the normalisation, the run):

- `export` (the default): a `torch.export` program (`torch.export.load(path,
  extra_files={"dtl_ray.json": ""})`, then `.module()(images)`): what torch 2.x serves,
  compiles and lowers (ExecuTorch, AOTInductor);
- `onnx`: an ONNX model (opset of torch's dynamo exporter; input `images`, output
  `probabilities`, the metadata as the model's `dtl_ray.json` metadata property), for
  onnxruntime, TensorRT, Triton;
- `torchscript`: `torch.jit.load(path, _extra_files={"dtl_ray.json": ""})`; torch 2.14
  deprecates TorchScript: kept for older consumers.
"""

from __future__ import annotations

import io
import json
import os

from dtl_ray import storage
from dtl_ray.data import samples
from dtl_ray.errors import ConfigError, RunError
from dtl_ray.method import builders, loops

__all__ = ["FORMATS", "EXPORT_META", "export"]

FORMATS = ("export", "onnx", "torchscript")
EXPORT_META = "dtl_ray.json"
"""The name of the JSON every exported file carries."""


def _module(model, mean, std):
    """The exported module: uint8 images in, probabilities out."""
    import torch

    class Exported(torch.nn.Module):
        """uint8 RGB images (N, H, W, 3) at the run's image size -> class probabilities
        (N, K) over the classes in the file's metadata, in that order."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean.clone())
            self.register_buffer("std", std.clone())

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
            x = (x - self.mean) / self.std
            return torch.softmax(self.model(x), dim=1)  # (N, K)

    return Exported().eval()


def _torch_export(module, example, info: dict) -> bytes:
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={EXPORT_META: json.dumps(info)})
    return buf.getvalue()


def _onnx(module, example, info: dict) -> bytes:
    import torch

    try:
        import onnx  # noqa: F401 (torch's exporter needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("--format onnx needs onnx and onnxscript: pip install "
                          "'dtl-ray[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"],
                                output_names=["probabilities"],
                                dynamic_shapes=({0: batch},), verbose=False)
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = EXPORT_META, json.dumps(info)
    return model.SerializeToString()


def _torchscript(module, example, info: dict) -> bytes:
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={EXPORT_META: json.dumps(info)})
    return buf.getvalue()


def export(run_dir: str, out: str, arm: str = "chosen", fmt: str = "export") -> dict:
    """Writes the run's `arm` model to `out` in format `fmt` (`FORMATS`); returns its
    metadata.

    Raises:
        RunError: not a run, or its model is missing or not fine-tuned.
        ConfigError: an unknown format, or ONNX without its packages.
    """
    import torch

    from dtl_ray.inference import predict

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    _, cfg, names, model_uri = predict.run_files(run_dir, arm)
    model, meta = builders.load_classifier(model_uri)
    classes = list(meta["classes"])
    if meta["num_classes"] != len(classes):
        raise RunError(f"model '{arm}' has {meta['num_classes']} outputs for {len(classes)} "
                       "classes: only fine-tuned models (one output per target class) export")
    geometry = predict.frame(cfg)
    size = samples.side(geometry)
    resize = ("to image_size x image_size with PIL's bilinear filter" if geometry == size else
              f"the shorter side to {geometry[1]} px with PIL's bilinear filter, then the centre "
              f"{size} x {size} px cropped (torchvision's Resize({geometry[1]}) and "
              f"CenterCrop({size}))")
    info = {"format": fmt, "classes": [names[c] for c in classes], "image_size": size,
            "resize_size": None if geometry == size else geometry[1],
            "input": f"uint8 RGB tensor (N, {size}, {size}, 3)",
            "resize": f"{resize}, after converting to RGB (transparency onto black)",
            "output": "class probabilities (N, K), K = len(classes)",
            "mean": loops.MEAN.flatten().tolist(), "std": loops.STD.flatten().tolist(),
            "arm": arm, "backbone": meta["backbone"], "run": os.path.abspath(run_dir)
            if "://" not in run_dir else run_dir}
    module = _module(model, loops.MEAN, loops.STD)
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    write = {"export": _torch_export, "onnx": _onnx, "torchscript": _torchscript}[fmt]
    storage.write_bytes(out, write(module, example, info))
    return info
