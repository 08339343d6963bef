"""Problem domains: the built-in arithmetic domain with its step oracle, file loaders,
answer grading and step splitting."""

from qstar_dagster.tasks.loaders import FORMATS, JsonlFields, ProblemFileError, load_problems
from qstar_dagster.tasks.problem import Problem, content_id
from qstar_dagster.tasks.steps import StepFormat, split_steps, step_format

__all__ = [
    "FORMATS", "JsonlFields", "Problem", "ProblemFileError", "StepFormat",
    "content_id", "load_problems", "split_steps", "step_format",
]
