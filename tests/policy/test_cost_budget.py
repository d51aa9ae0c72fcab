"""The cost guard: a monthly budget with alerts per cloud, from config, off by default."""

from __future__ import annotations

import datetime

import pytest

from components import InvalidArgs
from components.cost_budget import (
    AwsCostBudget,
    AwsCostBudgetArgs,
    AzureCostBudget,
    AzureCostBudgetArgs,
    GcpCostBudgetArgs,
)
from policy import Node, check_graph
from stacks.budget import budget_from_config
from stacks.config import ConfigError, StackConfig
from tests.pulumi_harness import StackRun, run_program, stack_config

TAGS = {"project": "llm-inference", "stack": "aws", "owner": "platform-team", "cloud": "aws", "managed-by": "pulumi"}
RG = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/llm-azure"
BILLING = "0123AB-4567CD-89EF01"


def run_budget(stack: str, overrides: dict, azure_scope: str | None = None) -> tuple[StackRun, object]:
    config, secret_keys = stack_config(stack, overrides)
    made = {}

    def program():
        tags = {**TAGS, "stack": stack, "cloud": stack}
        made["budget"] = budget_from_config(StackConfig(), stack, tags=tags, azure_scope=azure_scope)
        return {}

    run = run_program(program, stack=stack, config=config, secret_keys=secret_keys)
    return run, made["budget"]


def assert_passes_policy(run: StackRun) -> None:
    nodes = [Node(r.type, r.name, r.state or r.inputs, r.urn) for r in run.resources]
    assert check_graph(nodes, {r.urn: r.inputs for r in run.resources}) == []


@pytest.mark.parametrize("stack", ["aws", "gcp", "azure"])
def test_off_by_default(stack):
    run, budget = run_budget(stack, {}, azure_scope=RG)
    assert budget is None and run.resources == []


def test_aws_budget_alerts_by_email():
    run, budget = run_budget("aws", {"budgetMonthlyUsd": 500, "budgetAlertEmail": "ops@example.com, sre@example.com"})
    assert isinstance(budget, AwsCostBudget)
    assert run.type_counts() == {"aws:budgets/budget:Budget": 1, "llminfer:cost_budget:AwsCostBudget": 1}
    resource = run.one("aws:budgets/budget:Budget")
    inputs = resource.inputs
    assert inputs["name"] == "llm-inference-aws-cost"
    assert (inputs["limitAmount"], inputs["limitUnit"], inputs["timeUnit"], inputs["budgetType"]) == ("500.00", "USD", "MONTHLY", "COST")
    assert "costFilters" not in inputs  # the whole account by default
    assert [(n["notificationType"], n["threshold"]) for n in inputs["notifications"]] == [
        ("ACTUAL", 50), ("ACTUAL", 80), ("ACTUAL", 100), ("FORECASTED", 100)]
    assert all(n["subscriberEmailAddresses"] == ["ops@example.com", "sre@example.com"] for n in inputs["notifications"])
    assert inputs["tags"]["stack"] == "aws"
    assert resource.parent == run.one("llminfer:cost_budget:AwsCostBudget").urn
    assert_passes_policy(run)


def test_aws_budget_falls_back_to_the_alarm_email_and_can_count_only_the_stack():
    run, _ = run_budget("aws", {"budgetMonthlyUsd": 100, "alarmEmail": "alarms@example.com", "budgetTagScoped": True})
    inputs = run.one("aws:budgets/budget:Budget").inputs
    assert inputs["notifications"][0]["subscriberEmailAddresses"] == ["alarms@example.com"]
    assert inputs["costFilters"] == [{"name": "TagKeyValue", "values": ["user:stack$aws"]}]


def test_aws_budget_without_a_recipient_names_the_config_key():
    with pytest.raises(ConfigError, match="llm-inference:budgetAlertEmail.*needs a recipient"):
        run_budget("aws", {"budgetMonthlyUsd": 100})


def test_gcp_budget_on_the_billing_account_with_email_channels():
    run, _ = run_budget("gcp", {"budgetMonthlyUsd": 250, "gcpBillingAccount": BILLING,
                                "budgetAlertEmail": "ops@example.com", "budgetTagScoped": True})
    assert run.type_counts() == {"gcp:billing/budget:Budget": 1, "gcp:monitoring/notificationChannel:NotificationChannel": 1,
                                 "llminfer:cost_budget:GcpCostBudget": 1}
    channel = run.one("gcp:monitoring/notificationChannel:NotificationChannel").inputs
    assert (channel["type"], channel["labels"]) == ("email", {"email_address": "ops@example.com"})
    budget = run.one("gcp:billing/budget:Budget").inputs
    assert budget["billingAccount"] == BILLING
    assert budget["amount"]["specifiedAmount"] == {"currencyCode": "USD", "units": "250", "nanos": 0}
    assert budget["budgetFilter"]["projects"] == ["projects/123456789"]
    assert budget["budgetFilter"]["labels"] == {"stack": "gcp"}
    assert [(r["thresholdPercent"], r["spendBasis"]) for r in budget["thresholdRules"]] == [
        (0.5, "CURRENT_SPEND"), (0.8, "CURRENT_SPEND"), (1.0, "CURRENT_SPEND"), (1.0, "FORECASTED_SPEND")]
    assert budget["allUpdatesRule"]["monitoringNotificationChannels"] == ["cost-email-0-id"]
    assert_passes_policy(run)


def test_gcp_budget_needs_a_billing_account():
    with pytest.raises(ConfigError, match="llm-inference:gcpBillingAccount.*billing account id"):
        run_budget("gcp", {"budgetMonthlyUsd": 100})


def test_gcp_amount_keeps_cents():
    args = GcpCostBudgetArgs(monthly_limit_usd=99.5, billing_account=BILLING, project_number="1")
    config, keys = stack_config("gcp", {})

    def program():
        from components.cost_budget import GcpCostBudget

        GcpCostBudget("cost", args)
        return {}

    run = run_program(program, stack="gcp", config=config, secret_keys=keys)
    assert run.one("gcp:billing/budget:Budget").inputs["amount"]["specifiedAmount"]["nanos"] == 500_000_000
    assert "gcp:monitoring/notificationChannel:NotificationChannel" not in run.type_counts()


def test_azure_budget_covers_the_resource_group():
    run, budget = run_budget("azure", {"budgetMonthlyUsd": 300, "budgetAlertEmail": "ops@example.com"}, azure_scope=RG)
    assert isinstance(budget, AzureCostBudget)
    inputs = run.one("azure-native:consumption:Budget").inputs
    assert (inputs["scope"], inputs["amount"], inputs["category"], inputs["timeGrain"]) == (RG, 300, "Cost", "Monthly")
    start = datetime.date.fromisoformat(inputs["timePeriod"]["startDate"][:10])
    assert start.day == 1 and start <= datetime.date.today()
    assert sorted(inputs["notifications"]) == [
        "Actual_GreaterThan_100_Percent", "Actual_GreaterThan_50_Percent", "Actual_GreaterThan_80_Percent",
        "Forecasted_GreaterThan_100_Percent"]
    forecast = inputs["notifications"]["Forecasted_GreaterThan_100_Percent"]
    assert (forecast["thresholdType"], forecast["operator"], forecast["contactEmails"]) == ("Forecasted", "GreaterThan", ["ops@example.com"])
    assert_passes_policy(run)


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (AwsCostBudgetArgs(monthly_limit_usd=0, alert_emails=("a@example.com",)), "monthly_limit_usd", "positive"),
        (AwsCostBudgetArgs(monthly_limit_usd=10, alert_emails=("not-an-email",)), "alert_emails", "not an email"),
        (AwsCostBudgetArgs(monthly_limit_usd=10, alert_emails=("a@example.com",),
                           actual_thresholds_percent=(10, 20, 30, 40, 50)), "actual_thresholds_percent", "at most 5"),
        (AwsCostBudgetArgs(monthly_limit_usd=10, alert_emails=("a@example.com",),
                           actual_thresholds_percent=(80, 80)), "actual_thresholds_percent", "distinct"),
        (AwsCostBudgetArgs(monthly_limit_usd=10, alert_emails=tuple(f"a{i}@example.com" for i in range(11))),
         "alert_emails", "at most 10"),
        (GcpCostBudgetArgs(monthly_limit_usd=10, billing_account="abc"), "billing_account", "XXXXXX-XXXXXX-XXXXXX"),
        (GcpCostBudgetArgs(monthly_limit_usd=10, billing_account=BILLING, label_filter={"a": "1", "b": "2"}),
         "label_filter", "one label"),
        (AzureCostBudgetArgs(monthly_limit_usd=10, scope=RG), "alert_emails", "contact email"),
        (AzureCostBudgetArgs(monthly_limit_usd=10, alert_emails=("a@example.com",)), "scope", "resource group"),
        (AzureCostBudgetArgs(monthly_limit_usd=10, alert_emails=("a@example.com",), scope="rg"), "scope", "/subscriptions/"),
        (AzureCostBudgetArgs(monthly_limit_usd=10, alert_emails=("a@example.com",), scope=RG, start_date="2026-11-15"),
         "start_date", "first day of a month"),
    ],
)
def test_invalid_args_name_the_field(args, field, message):
    with pytest.raises(InvalidArgs, match=message) as err:
        args.validate()
    assert err.value.field == field


def test_component_validates_before_creating_anything():
    config, keys = stack_config("aws", {})
    with pytest.raises(InvalidArgs):
        run_program(lambda: {"b": AwsCostBudget("cost", AwsCostBudgetArgs(monthly_limit_usd=10))}, stack="aws",
                    config=config, secret_keys=keys)
