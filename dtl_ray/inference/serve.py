"""`dtl-ray serve`: a run's model behind HTTP, as a Ray Serve application.

POST an image's bytes (any format the pipeline reads) to the route; the answer is JSON:
`{"class": name, "label": id, "confidence": p, "p_target": q}` (q: how target-like the image
looks to the run's discriminator), or status 400 with `{"error": reason}` for bytes that are
not an image. Requests are batched (`@serve.batch`): one forward pass for all the requests
that arrive within `batch_wait_s`, up to `max_batch_size`. The image is read as the run
reads its images (its size, resize and crop, pixel limit).
"""

from __future__ import annotations

import numpy as np

from dtl_ray.data import decode

__all__ = ["application", "classify"]


def classify(predictor, names: list[str], raws: list[bytes], size, max_pixels: int) -> list:
    """One answer per request body: its class, confidence and p_target, or its error."""
    images, errors = [], []
    for raw in raws:
        try:
            images.append(decode.decode_image(raw, size, max_pixels))
            errors.append("")
        except Exception as e:  # noqa: BLE001 (not an image: its answer says why)
            images.append(None)
            errors.append(f"{type(e).__name__}: {e}"[:300])
    ok = [i for i, e in enumerate(errors) if not e]
    answers: list = [{"error": e} for e in errors]
    if ok:
        n = len(ok)
        out = predictor.label({
            "image": np.stack([images[i] for i in ok]), "error": np.full(n, "", dtype=object),
            "path": np.array([f"request-{i}" for i in ok], dtype=object),
            "sample_id": np.array([f"new/serve/request-{i}" for i in ok], dtype=object),
            "domain": np.full(n, "new", dtype=object), "split": np.full(n, "serve", dtype=object)})
        for j, i in enumerate(ok):
            label = int(out["label"][j])
            answers[i] = {"class": names[label], "label": label,
                          "confidence": float(out["confidence"][j]),
                          "p_target": float(out["p_target"][j])}
    return answers


def application(run_dir: str, arm: str = "chosen", max_batch_size: int = 32,
                batch_wait_s: float = 0.01, num_cpus: float = 1.0, use_gpu: bool = False):
    """The Serve application (bound deployment) of the run's `arm` model."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0})
    class Classifier:
        def __init__(self, run_dir: str, arm: str) -> None:
            from dtl_ray.inference import predict

            _, _, self.names, kwargs = predict.predictor_kwargs(run_dir, arm, use_gpu)
            self.size, self.max_pixels = kwargs["image_size"], kwargs["max_pixels"]
            self.predictor = predict.Predictor(**kwargs)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def batch(self, raws: list[bytes]) -> list:
            return classify(self.predictor, self.names, raws, self.size, self.max_pixels)

        async def __call__(self, request: Request):
            answer = await self.batch(await request.body())
            return JSONResponse(answer, status_code=400 if "error" in answer else 200)

    return Classifier.bind(run_dir, arm)
