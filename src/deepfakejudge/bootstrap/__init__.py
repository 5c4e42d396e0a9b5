"""Bootstrapped reasoning supervision (`dfj bootstrap`): a generator writes explanations at five
intended quality levels, an evaluator rates them, misaligned ones are refined with its feedback,
accepted ones are paraphrased and re-checked; the result is judge training data.

Modules: `prompts` (the roles' templates and output parsing), `state` (the per-(image, level)
state machine), `journal` (append-only persistence), `engine` (batched calls across items),
`outputs` (records, pairs, split, ms-swift), `stats` (the report), `run` (one run end to end).
"""

from .engine import CallSettings, Engine
from .prompts import (
    LEVELS,
    ROLES,
    RolePrompts,
    parse_explanation,
    parse_prompt_overrides,
    verdict,
)
from .run import BootstrapConfig, BootstrapResult, DryRunPlan, ShownPrompt, call_bounds, plan_dry_run, run_bootstrap
from .state import Action, Settings, Unit

__all__ = [
    "LEVELS",
    "ROLES",
    "Action",
    "BootstrapConfig",
    "BootstrapResult",
    "CallSettings",
    "DryRunPlan",
    "Engine",
    "RolePrompts",
    "Settings",
    "ShownPrompt",
    "Unit",
    "call_bounds",
    "parse_explanation",
    "parse_prompt_overrides",
    "plan_dry_run",
    "run_bootstrap",
    "verdict",
]
