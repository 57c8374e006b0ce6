"""Property: whatever overrides and files a user throws at `dtl-ray run --check`, the answer
is either acceptance or one line on stderr with exit code 2, never a traceback."""

import contextlib
import io
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dtl_ray import cli, config
from dtl_ray.pipeline.fingerprints import flat
from dtl_ray.storage import checkpoints

EXAMPLES = int(os.environ.get("DTL_RAY_PROPERTY_EXAMPLES", "300"))


KEYS = sorted(flat(config.to_dict(config.PipelineConfig())))
# values people type, and values that broke parsers before: YAML syntax, numbers as strings,
# paths, schemes, names that escape, huge and negative numbers, non-ASCII
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1e-4", "1E3", "0.5", "2", "-5", "1e309", "nan", "inf", "true",
                     "no", "null", "~", "[]", "[0.1", "{a: 1}", "@d", "*x", "&a b", "!tag x",
                     "'q", '"', "#", "a #2", "..", "a/b", "/", "s3://", "gs://b/r",
                     "file:///tmp", "s3://b/r", "smallcnn", "resnet18", "vit_b_16",
                     "inception_v3", "alexnet", "stage3", "layer4", "[all]", "[0.0, 0.5]",
                     "[density_ratio]", "auto", "always", "adversarial", "iwan", "\u00e9\u00e8",
                     "99999999999999999999", "1_000", "0x10", "  ", ""]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
DEFAULTS = flat(config.to_dict(config.PipelineConfig()))


def _yaml(v) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


# an override: mostly a known key with its default, a nearby or edge value, or anything
KNOWN = st.sampled_from(KEYS).flatmap(lambda k: st.one_of(
    st.just(f"{k}={_yaml(DEFAULTS[k])}"),
    st.sampled_from(["0", "1", "-1", "2", "0.5", "1e-4", "true", "[]", "null"]).map(
        lambda v: f"{k}={v}"),
    VALUES.map(lambda v: f"{k}={v}")))
ANY = st.tuples(st.text(max_size=10), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")
OVERRIDES = st.lists(st.one_of(KNOWN, KNOWN, KNOWN, ANY), max_size=3)
VALID_FILES = st.sampled_from(["", "name: x\n", "pretrain: {epochs: 2}\n", "seed: 3\n",
                               "select: {fraction: 0.2}\n"])
CONFIG_FILES = st.one_of(
    VALID_FILES, VALID_FILES, VALID_FILES, VALID_FILES, VALID_FILES, VALID_FILES,
    st.sampled_from(["pretrain:\n  epochs: [\n", "\tname: a\n", "- a\n- b\n",
                     "name: caf\u00e9\n", "pretrain: 3\n", "model: {backbone: 7}\n"]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")), st.text(max_size=40))


@pytest.fixture(scope="module")
def files(tiny_demo, tmp_path_factory):
    """Files a `model.weights` or a config may point at: a real classifier checkpoint, a
    discriminator, text, random bytes, a folder, nothing."""
    from dtl_ray.method import builders

    root = tmp_path_factory.mktemp("prop")
    net = builders.classifier(config.ModelConfig(backbone="smallcnn", image_size=32), 2)
    checkpoints.save_classifier(str(root / "clf.pt"), net.state_dict(), "smallcnn", [0, 1])
    checkpoints.save_discriminator(str(root / "disc.pt"), [{"w": torch.zeros(1)}], [(1.0, 0.0)],
                                   0.2, None, 4, 4, 1, 1, True)
    (root / "text.pt").write_text("not a checkpoint")
    (root / "noise.pt").write_bytes(os.urandom(64))
    return {"clf": root / "clf.pt", "disc": root / "disc.pt", "text": root / "text.pt",
            "noise": root / "noise.pt", "dir": root, "none": root / "missing.pt",
            "data": tiny_demo, "storage": root / "out"}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=CONFIG_FILES, overrides=OVERRIDES,
       weights=st.sampled_from([None, None, None, "clf", "disc", "text", "noise", "dir",
                                "none"]),
       stages=st.sampled_from([None, None, "pretrain", "score,select", "polish", ""]))
def test_preflight_is_accepted_or_one_line(files, tmp_path_factory, text, overrides, weights,
                                           stages):
    root = tmp_path_factory.mktemp("c", numbered=True)
    f = root / "c.yaml"
    base = (f"source: {{uri: {files['data']}/source}}\ntarget: {{uri: {files['data']}/target}}\n"
            f"storage: {files['storage']}\nmodel: {{backbone: smallcnn, image_size: 32}}\n")
    f.write_bytes((base + text).encode("utf-8", "surrogateescape"))
    args = ["run", str(f), "--check", *[f"--set={o}" for o in overrides]]
    if weights:
        args.append(f"--set=model.weights={files[weights]}")
    if stages is not None:
        args.append(f"--stages={stages}")
    out, err = io.StringIO(), io.StringIO()
    env = dict(os.environ)  # `s3.endpoint_url`/`s3.region` are set in the process environment
    # (for the workers a run starts): without this, an example's `s3.region=1e-4` reached the
    # S3 tests that ran after this one in the same session
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as e:  # argparse's own errors: usage line + error line
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(env)
    lines = err.getvalue().strip().splitlines()
    assert "Traceback" not in err.getvalue()
    event("accepted" if code == 0 else "refused: " + " ".join(lines[-1].split()[2:4]))
    if code == 0:
        assert "are usable" in out.getvalue()
    else:
        assert code == 2, (args, code, lines)
        assert len(lines) == 1 and lines[0].startswith("dtl-ray: error: "), (args, lines)
