"""The stage registry: one record per stage, which the layout, the fingerprints, the results and
the pipeline read."""

import dataclasses
import importlib
import inspect

import pytest

from dtl_ray.config import PipelineConfig, load_config
from dtl_ray.contract import registry
from dtl_ray.errors import ConfigError
from dtl_ray.pipeline import fingerprints


def test_each_record_names_a_stage_module_whose_run_takes_its_sections():
    """`Stage.run` finds its module by the stage's name and passes the record's sections by
    name: a section the run does not take, or a run parameter no section fills, fails here
    rather than an hour into a run."""
    sections = {f.name for f in dataclasses.fields(PipelineConfig)}
    for s in registry.STAGES:
        run = importlib.import_module(f"dtl_ray.stages.{s.name}").run
        assert set(s.sections) <= sections, s.name
        inspect.signature(run).bind("layout", **{k: None for k in s.sections})
        assert run.__annotations__.get("return") in (s.result.__name__, s.result), s.name


def test_fingerprint_keys_are_config_keys():
    keys = set(fingerprints.flat(dataclasses.asdict(load_config(
        base={"source": {"uri": "s"}, "target": {"uri": "t"}}))))
    for s in registry.STAGES:
        for k in s.fingerprint:
            assert k in keys or any(f.startswith(k + ".") for f in keys), (s.name, k)


def test_names_are_checked_with_the_choices_in_the_message():
    assert registry.stage("score").name == "score" and registry.NAMES[0] == "pretrain"
    with pytest.raises(ValueError, match="unknown stage 'scoring'"):
        registry.stage("scoring")
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['polish'\]: choose from"):
        registry.check_names(["pretrain", "polish"])
