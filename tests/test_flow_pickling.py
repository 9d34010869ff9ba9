"""A scheduled run gets the pipeline flow cloudpickled by value into a new process (Prefect's runner):
the stage flows it calls must still validate their parameters there."""

import cloudpickle
import pytest
from prefect.exceptions import SignatureMismatchError

from flows.pipeline import served_pipeline
from flows.stage_flows import STAGE_FLOWS
from tasks.common.config import Config


def test_stage_flows_validate_their_parameters_after_pickling_by_value():
    for name, stage in STAGE_FLOWS.items():
        copy = cloudpickle.loads(cloudpickle.dumps(stage))  # a closure: always pickled by value
        validated = copy.validate_parameters({"cfg": Config(), "root": ".", "parent_run_id": None})
        assert isinstance(validated["cfg"], Config), name


def test_the_served_pipeline_takes_only_stages_and_force_after_pickling_by_value():
    """`ldmflow serve`'s flow keeps its project, params file and overrides in itself: a run's parameters
    cannot name others (tests/test_schedule_e2e.py starts such runs on a real server)."""
    served = served_pipeline("/srv/project", "params.yaml", ["unet.steps=3"])
    copy = cloudpickle.loads(cloudpickle.dumps(served))
    assert copy.name == "ldmflow-pipeline"
    assert copy.validate_parameters({"stages": ["ingest"]}) == {"stages": ["ingest"], "force": False}
    for name in ("root", "params_file", "overrides"):
        with pytest.raises(SignatureMismatchError):
            copy.validate_parameters({name: "elsewhere"})
