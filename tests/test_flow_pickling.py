"""A scheduled run gets the pipeline flow cloudpickled by value into a new process (Prefect's runner):
the stage flows it calls must still validate their parameters there."""

import cloudpickle

from flows.stage_flows import STAGE_FLOWS
from tasks.common.config import Config


def test_stage_flows_validate_their_parameters_after_pickling_by_value():
    for name, stage in STAGE_FLOWS.items():
        copy = cloudpickle.loads(cloudpickle.dumps(stage))  # a closure: always pickled by value
        validated = copy.validate_parameters({"cfg": Config(), "root": ".", "parent_run_id": None})
        assert isinstance(validated["cfg"], Config), name
