"""A monthly cost budget with alerts, one component per cloud, all of the same shape.

Each alerts at 50/80/100 % of actual spend and at 100 % of forecast spend (by default), to email:
- AWS Budgets (`aws:budgets/budget:Budget`): the whole account, or only costs tagged `stack=<stack>`
  (that cost allocation tag must be activated in Billing, or the budget sees $0). Optional SNS
  topics must allow budgets.amazonaws.com to publish, with a customer-managed key if encrypted.
- GCP (`gcp:billing/budget:Budget`): the project (optionally only resources labelled
  `stack=<stack>`) on a billing account; email through Cloud Monitoring channels, and the billing
  account's admins get it too.
- Azure (`azure-native:consumption:Budget`): the stack's resource group.

Budgets alert; they do not stop spending. The GPU capacity ceiling (policy rule gpu-capacity-max)
and maxInstances bound the spend.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from components._args import InvalidArgs, require, require_positive, require_text

_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
_GCP_BILLING_ACCOUNT = re.compile(r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$")
# AWS Budgets and Azure budgets take at most 5 notifications each.
_MAX_NOTIFICATIONS = 5
_AWS_MAX_SUBSCRIBERS = 10
_GCP_MAX_CHANNELS = 5


@dataclass(frozen=True)
class BudgetAlertArgs:
    """What every cloud's budget takes: the monthly limit and who is told when."""

    monthly_limit_usd: float
    alert_emails: tuple[str, ...] = ()
    # Percent of the limit at which actual spend alerts.
    actual_thresholds_percent: tuple[float, ...] = (50.0, 80.0, 100.0)
    # Percent of the limit at which forecast spend alerts; None for no forecast alert.
    forecast_threshold_percent: float | None = 100.0
    tags: Mapping[str, str] = field(default_factory=dict)

    def _validate_common(self, component: str) -> None:
        require_positive(component, "monthly_limit_usd", self.monthly_limit_usd)
        require(component, "alert_emails", isinstance(self.alert_emails, tuple),
                f"must be a tuple of email addresses, got {self.alert_emails!r}")
        for email in self.alert_emails:
            require(component, "alert_emails", isinstance(email, str) and _EMAIL.match(email) is not None,
                    f"{email!r} is not an email address")
        thresholds = list(self.actual_thresholds_percent)
        for percent in thresholds + ([] if self.forecast_threshold_percent is None else [self.forecast_threshold_percent]):
            require(component, "actual_thresholds_percent",
                    isinstance(percent, int | float) and not isinstance(percent, bool) and 0 < percent <= 1000,
                    f"thresholds are percents of the limit in (0, 1000], got {percent!r}")
        require(component, "actual_thresholds_percent", len(set(thresholds)) == len(thresholds) and thresholds,
                f"must be distinct and not empty, got {thresholds!r}")
        require(component, "actual_thresholds_percent", self.notification_count <= _MAX_NOTIFICATIONS,
                f"{self.notification_count} notifications asked; budgets take at most {_MAX_NOTIFICATIONS}")

    @property
    def notification_count(self) -> int:
        return len(self.actual_thresholds_percent) + (self.forecast_threshold_percent is not None)

    def notifications(self) -> list[tuple[str, float]]:
        """(ACTUAL|FORECASTED, percent) in a stable order."""
        chosen = [("ACTUAL", float(p)) for p in sorted(self.actual_thresholds_percent)]
        if self.forecast_threshold_percent is not None:
            chosen.append(("FORECASTED", float(self.forecast_threshold_percent)))
        return chosen


@dataclass(frozen=True)
class AwsCostBudgetArgs(BudgetAlertArgs):
    # Topics must allow budgets.amazonaws.com to sns:Publish (and use a key Budgets may use).
    sns_topic_arns: tuple[pulumi.Input[str], ...] = ()
    # (key, value) of an activated cost allocation tag; None counts the whole account.
    cost_allocation_tag: tuple[str, str] | None = None

    def validate(self) -> None:
        self._validate_common(_AWS)
        require(_AWS, "alert_emails", bool(self.alert_emails or self.sns_topic_arns),
                "an AWS budget alert needs a recipient: give an email or an SNS topic")
        subscribers = len(self.alert_emails) + len(self.sns_topic_arns)
        require(_AWS, "alert_emails", subscribers <= _AWS_MAX_SUBSCRIBERS,
                f"{subscribers} subscribers; AWS Budgets takes at most {_AWS_MAX_SUBSCRIBERS} per notification")
        if self.cost_allocation_tag is not None:
            key, value = self.cost_allocation_tag
            require_text(_AWS, "cost_allocation_tag", key)
            require_text(_AWS, "cost_allocation_tag", value)


@dataclass(frozen=True)
class GcpCostBudgetArgs(BudgetAlertArgs):
    billing_account: str = ""
    # The project's number; None looks the provider's project up.
    project_number: pulumi.Input[str] | None = None
    # Only costs of resources carrying these labels (GCP budgets take one label).
    label_filter: Mapping[str, str] = field(default_factory=dict)
    # Must be the billing account's currency.
    currency_code: str = "USD"

    def validate(self) -> None:
        self._validate_common(_GCP)
        require(_GCP, "billing_account", isinstance(self.billing_account, str)
                and _GCP_BILLING_ACCOUNT.match(self.billing_account) is not None,
                f"{self.billing_account!r} is not a billing account id (XXXXXX-XXXXXX-XXXXXX, from `gcloud billing accounts list`)")
        require(_GCP, "alert_emails", len(self.alert_emails) <= _GCP_MAX_CHANNELS,
                f"{len(self.alert_emails)} emails; a GCP budget takes at most {_GCP_MAX_CHANNELS} notification channels")
        require(_GCP, "label_filter", len(self.label_filter) <= 1,
                f"GCP budgets filter on at most one label, got {dict(self.label_filter)!r}")
        require(_GCP, "currency_code", re.fullmatch(r"[A-Z]{3}", str(self.currency_code)) is not None,
                f"{self.currency_code!r} is not an ISO 4217 currency code")


@dataclass(frozen=True)
class AzureCostBudgetArgs(BudgetAlertArgs):
    # Resource id the budget covers: the stack's resource group (or a subscription).
    scope: pulumi.Input[str] | None = None
    # First day of the month the budget starts (YYYY-MM-01); empty: the current month.
    start_date: str = ""

    def validate(self) -> None:
        self.validate_settings()
        require(_AZURE, "scope", self.scope is not None, "give the resource group (or subscription) id to cover")
        if isinstance(self.scope, str):
            require(_AZURE, "scope", self.scope.startswith("/subscriptions/"),
                    f"{self.scope!r} is not an Azure resource id (/subscriptions/...)")

    def validate_settings(self) -> None:
        """Everything but the scope, which a stack may only know once its resource group exists."""
        self._validate_common(_AZURE)
        require(_AZURE, "alert_emails", bool(self.alert_emails),
                "Azure budgets on a resource group need at least one contact email")
        if self.start_date:
            require(_AZURE, "start_date", re.fullmatch(r"\d{4}-\d{2}-01", self.start_date) is not None,
                    f"{self.start_date!r} must be the first day of a month, YYYY-MM-01")

    def first_day(self) -> str:
        return self.start_date or datetime.date.today().replace(day=1).isoformat()


_AWS = "AwsCostBudget"
_GCP = "GcpCostBudget"
_AZURE = "AzureCostBudget"


def budget_name(name: str) -> str:
    """Budgets are named per account: the project, the stack and the component's name."""
    return f"{pulumi.get_project()}-{pulumi.get_stack()}-{name}"[:100]


class AwsCostBudget(pulumi.ComponentResource):
    budget_name: pulumi.Output[str]
    limit_usd: pulumi.Output[float]

    def __init__(self, name: str, args: AwsCostBudgetArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:cost_budget:{_AWS}", name, None, opts)
        from pulumi_aws import budgets

        cost_filters = None
        if args.cost_allocation_tag is not None:
            key, value = args.cost_allocation_tag
            cost_filters = [budgets.BudgetCostFilterArgs(name="TagKeyValue", values=[f"user:{key}${value}"])]
        budget = budgets.Budget(
            f"{name}-budget",
            name=budget_name(name),
            budget_type="COST",
            limit_amount=f"{float(args.monthly_limit_usd):.2f}",
            limit_unit="USD",
            time_unit="MONTHLY",
            cost_filters=cost_filters,
            notifications=[
                budgets.BudgetNotificationArgs(
                    notification_type=kind,
                    comparison_operator="GREATER_THAN",
                    threshold=percent,
                    threshold_type="PERCENTAGE",
                    subscriber_email_addresses=list(args.alert_emails) or None,
                    subscriber_sns_topic_arns=list(args.sns_topic_arns) or None,
                )
                for kind, percent in args.notifications()
            ],
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.budget_name = budget.name
        self.limit_usd = pulumi.Output.from_input(float(args.monthly_limit_usd))
        self.register_outputs({"budget_name": self.budget_name, "limit_usd": self.limit_usd})


class GcpCostBudget(pulumi.ComponentResource):
    budget_name: pulumi.Output[str]
    limit_usd: pulumi.Output[float]

    def __init__(self, name: str, args: GcpCostBudgetArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:cost_budget:{_GCP}", name, None, opts)
        from pulumi_gcp import billing, monitoring, organizations

        child = pulumi.ResourceOptions(parent=self)
        project_number = args.project_number
        if project_number is None:
            project_number = organizations.get_project_output(opts=pulumi.InvokeOutputOptions(parent=self)).number
        channels = [
            monitoring.NotificationChannel(
                f"{name}-email-{index}",
                type="email",
                display_name=f"{budget_name(name)} budget: {email}",
                labels={"email_address": email},
                user_labels=dict(args.tags),
                opts=child,
            )
            for index, email in enumerate(args.alert_emails)
        ]
        units, cents = divmod(round(float(args.monthly_limit_usd) * 100), 100)
        budget = billing.Budget(
            f"{name}-budget",
            billing_account=args.billing_account,
            display_name=budget_name(name)[:60],
            amount=billing.BudgetAmountArgs(
                specified_amount=billing.BudgetAmountSpecifiedAmountArgs(
                    currency_code=args.currency_code, units=str(units), nanos=cents * 10_000_000
                )
            ),
            budget_filter=billing.BudgetBudgetFilterArgs(
                projects=[pulumi.Output.concat("projects/", project_number)],
                labels=dict(args.label_filter) or None,
                calendar_period="MONTH",
            ),
            threshold_rules=[
                billing.BudgetThresholdRuleArgs(
                    threshold_percent=percent / 100,
                    spend_basis="FORECASTED_SPEND" if kind == "FORECASTED" else "CURRENT_SPEND",
                )
                for kind, percent in args.notifications()
            ],
            # Billing account admins always get the alert; the channels add the configured emails.
            all_updates_rule=billing.BudgetAllUpdatesRuleArgs(
                monitoring_notification_channels=[c.id for c in channels] or None,
                disable_default_iam_recipients=False,
            ),
            opts=child,
        )
        self.budget_name = budget.display_name
        self.limit_usd = pulumi.Output.from_input(float(args.monthly_limit_usd))
        self.register_outputs({"budget_name": self.budget_name, "limit_usd": self.limit_usd})


class AzureCostBudget(pulumi.ComponentResource):
    budget_name: pulumi.Output[str]
    limit_usd: pulumi.Output[float]

    def __init__(self, name: str, args: AzureCostBudgetArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:cost_budget:{_AZURE}", name, None, opts)
        from pulumi_azure_native import consumption

        budget = consumption.Budget(
            f"{name}-budget",
            budget_name=budget_name(name),
            scope=args.scope,
            amount=float(args.monthly_limit_usd),
            category="Cost",
            time_grain="Monthly",
            # Azure wants the first day of a month, no earlier than the current one at creation; later
            # runs keep the original start instead of moving it every month.
            time_period=consumption.BudgetTimePeriodArgs(start_date=f"{args.first_day()}T00:00:00Z"),
            notifications={
                f"{kind.title()}_GreaterThan_{percent:g}_Percent": consumption.NotificationArgs(
                    enabled=True,
                    operator="GreaterThan",
                    threshold=percent,
                    threshold_type="Forecasted" if kind == "FORECASTED" else "Actual",
                    contact_emails=list(args.alert_emails),
                )
                for kind, percent in args.notifications()
            },
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["timePeriod.startDate"]),
        )
        self.budget_name = budget.name
        self.limit_usd = pulumi.Output.from_input(float(args.monthly_limit_usd))
        self.register_outputs({"budget_name": self.budget_name, "limit_usd": self.limit_usd})


BudgetArgs = AwsCostBudgetArgs | GcpCostBudgetArgs | AzureCostBudgetArgs
CostBudget = AwsCostBudget | GcpCostBudget | AzureCostBudget


def create_budget(name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None) -> CostBudget:
    """The budget component of the cloud the args are for."""
    if isinstance(args, AwsCostBudgetArgs):
        return AwsCostBudget(name, args, opts)
    if isinstance(args, GcpCostBudgetArgs):
        return GcpCostBudget(name, args, opts)
    if isinstance(args, AzureCostBudgetArgs):
        return AzureCostBudget(name, args, opts)
    raise InvalidArgs("create_budget", "args", f"{type(args).__name__} is not a cloud's budget args")
