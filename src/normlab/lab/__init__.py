"""The lab: built-in data, small models, the claims' studies and the resumable runner."""

from normlab.lab.study import CLAIM_IDS, LabError, parse_overrides, plan_study, run_lab

__all__ = ["CLAIM_IDS", "LabError", "parse_overrides", "plan_study", "run_lab"]
