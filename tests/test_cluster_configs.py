"""The cluster configs agree with Ray's schema, the installed Ray and the repo's paths."""

import json
import os
import re
import subprocess
import sys

import jsonschema
import ray
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")


def _load(rel):
    with open(os.path.join(CLUSTER, rel)) as f:
        return yaml.safe_load(f)


def test_aws_config_validates_against_rays_schema():
    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    cfg = _load("aws-gpu.yaml")
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["resources"]["GPU"] >= 1
    assert "GPU" not in types["cpu_worker"]["resources"]
    assert types[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]


def test_a_broken_config_is_caught_by_the_schema():
    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    cfg = _load("aws-gpu.yaml")
    cfg["available_node_types"]["gpu_worker"]["min_workers"] = "none"
    try:
        jsonschema.validate(cfg, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted min_workers: 'none'")


def _images(obj):
    text = yaml.safe_dump(obj)
    return re.findall(r"rayproject/ray:([\w.\-]+)", text)


def test_images_and_versions_match_the_installed_ray():
    tags = _images(_load("aws-gpu.yaml"))
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = _load(rel)
        tags += _images(doc)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == ray.__version__
    assert tags and {t.split("-")[0] for t in tags} == {ray.__version__}
    assert all("py311" in t for t in tags)


def test_every_entrypoint_path_exists():
    job = _load("kuberay/rayjob.yaml")
    named = re.findall(r"[\w/]+\.(?:py|yaml)", job["spec"]["entrypoint"])
    with open(os.path.join(CLUSTER, "README.md")) as f:
        named += re.findall(r"(?:jobs|configs|cluster)/[\w/.\-]+\.(?:py|yaml)", f.read())
    with open(os.path.join(ROOT, "jobs", "README.md")) as f:
        named += re.findall(r"(?:jobs|configs|cluster)/[\w/.\-]+\.(?:py|yaml)", f.read())
    assert "jobs/run.py" in named
    for rel in set(named):
        assert os.path.exists(os.path.join(ROOT, rel)), rel


def test_job_script_parses_and_fails_cleanly(tmp_path):
    for extra in ([], ["--stages", "score"]):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "run.py"),
                               str(tmp_path / "missing.yaml"), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert "config file not found" in proc.stderr


def test_job_takes_code_and_package_from_one_version_the_repos():
    """The RayJob's working_dir (the code its driver runs) and the package every node installs
    name the same tag, this repository's version: a job never runs one version's entrypoint
    on another version's package. The shipped cluster configs run the photo recipe and let the
    autoscaler add the 8 GPU nodes it is written for."""
    import dtl_ray

    tag = f"v{dtl_ray.__version__}"
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        text = yaml.safe_dump(_load(rel))
        assert set(re.findall(r"dtl-ray@(v[\w.]+)", text)) == {tag}, rel
    job = _load("kuberay/rayjob.yaml")
    assert job["spec"]["runtimeEnvYAML"].count(f"refs/tags/{tag}.zip") == 1
    assert "configs/photos.yaml" in job["spec"]["entrypoint"]
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["maxReplicas"] for g in groups if g["groupName"] == "gpu"] == [8]
    aws = _load("aws-gpu.yaml")
    assert aws["available_node_types"]["gpu_worker"]["max_workers"] == 8
    assert aws["idle_timeout_minutes"] >= 10  # longer than the gaps between stages
