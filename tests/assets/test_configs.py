"""Each stage's Dagster config is derived from its spec: the same fields, defaults and help
texts, written once; and building the spec back runs its validation."""

import dataclasses

import pytest

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets.datasets import DatasetsConfig
from qstar_dagster.assets.evaluation import EvaluationConfig
from qstar_dagster.assets.labels import JudgeModelConfig, MonteCarloLabelsConfig
from qstar_dagster.assets.policy import BasePolicyAssetConfig
from qstar_dagster.assets.rollouts import RolloutsConfig
from qstar_dagster.assets.training import DPOConfig, PRMConfig, RFTConfig, StepPPOConfig
from qstar_dagster.datasets.build import DatasetSpec
from qstar_dagster.evaluation.evaluate import EvalSpec
from qstar_dagster.search.algorithms import SearchSpec
from qstar_dagster.search.estimate import EstimatorSpec
from qstar_dagster.training.base_policy import BasePolicyConfig, PolicyEvalSpec
from qstar_dagster.training.dpo import DPOSpec
from qstar_dagster.training.judge import JudgeTrainSpec
from qstar_dagster.training.prm import PRMTrainSpec
from qstar_dagster.training.rft import RFTSpec
from qstar_dagster.training.step_ppo import StepPPOSpec

PAIRS = [  # (config, spec, prefix of the spec's fields in the config)
    (RolloutsConfig, SearchSpec, ""), (MonteCarloLabelsConfig, EstimatorSpec, ""), (JudgeModelConfig, JudgeTrainSpec, ""),
    (DatasetsConfig, DatasetSpec, ""), (PRMConfig, PRMTrainSpec, ""), (RFTConfig, RFTSpec, ""), (DPOConfig, DPOSpec, ""),
    (EvaluationConfig, EvalSpec, ""), (BasePolicyAssetConfig, BasePolicyConfig, ""),
    (BasePolicyAssetConfig, PolicyEvalSpec, "eval_"), (StepPPOConfig, StepPPOSpec, ""),
]


@pytest.mark.parametrize(("config", "spec", "prefix"), PAIRS, ids=lambda x: getattr(x, "__name__", x))
def test_config_fields_are_the_specs(config, spec, prefix):
    fields = config.model_fields
    for f in dataclasses.fields(spec):
        name = prefix + f.name
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert name not in fields  # (a dataset's kind: one per entry of `kinds`)
            continue
        if f.default is dataclasses.MISSING:  # a round's per-stage overrides: code, not launchpad, options
            continue
        assert name in fields, f"{config.__name__} lacks {spec.__name__}.{f.name}"
        default = fields[name].default
        assert (tuple(default) if isinstance(default, list) else default) == f.default, name
        assert f.metadata.get("help") and fields[name].description == f.metadata["help"], f"{name}: no help text"


def test_defaults_build_the_specs_defaults():
    assert RolloutsConfig().spec() == SearchSpec()
    assert to_spec(PRMConfig(), PRMTrainSpec) == PRMTrainSpec()
    assert to_spec(EvaluationConfig(), EvalSpec) == EvalSpec()  # a list in the config, a tuple in the spec
    assert to_spec(BasePolicyAssetConfig(), PolicyEvalSpec, prefix="eval_") == PolicyEvalSpec()
    assert to_spec(DatasetsConfig(), DatasetSpec, kind="prm") == DatasetSpec("prm")


def test_the_spec_validates_what_the_launchpad_sends():
    with pytest.raises(ValueError, match="search algorithm must be one of"):
        RolloutsConfig(algorithm="dfs").spec()
    with pytest.raises(ValueError, match="a classifier PRM must be trained"):
        to_spec(PRMConfig(head="classifier"), PRMTrainSpec)
    with pytest.raises(TypeError, match="has no default"):
        spec_config(DatasetSpec)  # kind has none: a config cannot offer it
