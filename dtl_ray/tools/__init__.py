"""Tooling around the pipeline, which the pipeline itself never imports: `perf` (performance
figures, Ray against plain PyTorch: `dtl-ray perf`, `make perf`) and `bench` (the method and
every baseline over seeds: `dtl-ray bench`)."""
