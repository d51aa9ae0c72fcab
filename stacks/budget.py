"""The stack's cost budget from its config (budgetMonthlyUsd > 0): config keys -> the component's typed args.

What reads a stack's config lives in `stacks/`; `components.cost_budget` takes typed args only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from components._args import InvalidArgs
from components.cost_budget import (
    AwsCostBudgetArgs,
    AzureCostBudgetArgs,
    BudgetArgs,
    CostBudget,
    GcpCostBudgetArgs,
    create_budget,
)
from stacks.config import config_keys

# Component field -> config key, for stacks.config.config_keys.
CONFIG_KEYS = {
    "monthly_limit_usd": "budgetMonthlyUsd",
    "alert_emails": "budgetAlertEmail",
    "billing_account": "gcpBillingAccount",
}



def budget_args_from_config(
    cfg: Any,
    cloud: str,
    *,
    tags: Mapping[str, str],
    azure_scope: pulumi.Input[str] | None = None,
) -> BudgetArgs | None:
    """The stack's budget args from its config (budgetMonthlyUsd > 0), checked, or None when it is off.

    A stack calls this before it creates its first resource, so a bad budget setting fails the run
    before anything exists. `cfg` is the stack's `stacks.config.StackConfig`; a bad value is reported
    under its config key. An Azure stack that creates its resource group in the same program passes no
    `azure_scope` here and sets it with `dataclasses.replace` once the group exists.
    """
    limit = cfg.integer("budgetMonthlyUsd", minimum=0)
    if limit == 0:
        return None
    email = cfg.text("budgetAlertEmail", allow_empty=True) or cfg.text("alarmEmail", allow_empty=True)
    emails = tuple(e.strip() for e in email.split(",") if e.strip())
    scoped = cfg.boolean("budgetTagScoped")
    stack = pulumi.get_stack()
    with config_keys(cfg, CONFIG_KEYS):
        if cloud == "aws":
            aws_args = AwsCostBudgetArgs(
                monthly_limit_usd=limit, alert_emails=emails, tags=tags,
                cost_allocation_tag=("stack", stack) if scoped else None,
            )
            aws_args.validate()
            return aws_args
        if cloud == "gcp":
            gcp_args = GcpCostBudgetArgs(
                monthly_limit_usd=limit, alert_emails=emails, tags=tags,
                billing_account=cfg.text("gcpBillingAccount", allow_empty=True),
                label_filter={"stack": stack} if scoped else {},
            )
            gcp_args.validate()
            return gcp_args
        if cloud == "azure":
            azure_args = AzureCostBudgetArgs(monthly_limit_usd=limit, alert_emails=emails, tags=tags, scope=azure_scope)
            if azure_scope is None:
                azure_args.validate_settings()
            else:
                azure_args.validate()
            return azure_args
    raise InvalidArgs("budget_from_config", "cloud", f"{cloud!r} is not aws, gcp or azure")


def budget_from_config(
    cfg: Any,
    cloud: str,
    *,
    tags: Mapping[str, str],
    azure_scope: pulumi.Input[str] | None = None,
    name: str = "cost",
    opts: pulumi.ResourceOptions | None = None,
) -> CostBudget | None:
    """The stack's budget from its config (budgetMonthlyUsd > 0), or None when it is off.

    `cfg` is the stack's `stacks.config.StackConfig`; a bad value is reported under its config key.
    """
    args = budget_args_from_config(cfg, cloud, tags=tags, azure_scope=azure_scope)
    if args is None:
        return None
    with config_keys(cfg, CONFIG_KEYS):
        return create_budget(name, args, opts)
