from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.errors import ConfigError
from otel_meter.extensions.budgets.config import BudgetsConfig
from otel_meter.extensions.budgets.monitor import BudgetMonitor

TYPE = "budgets"


def create(config: BudgetsConfig, context: BuildContext) -> BudgetMonitor:
    """The monitor, offered through the host (``Host.budgets``) so the usage API can ask it for
    entitlements, credit ledgers and grants. The rating processor's cards (``Host.rate_cards``)
    are built after the extensions, so the monitor looks them up when it starts."""
    where = f"extensions.{context.component_id}"
    store = context.host.store()
    if store is None:
        raise ConfigError(f"{where}: budgets read rated usage from the store; add a clickhouse exporter to a pipeline")
    existing = context.host.budgets()
    if existing is not None:
        raise ConfigError(f"{where}: only one budgets extension may run ({existing.where} is already listed in "
                          f"service.extensions); two would alert every crossing twice")
    monitor = BudgetMonitor(config, store, context.host.rate_cards(), where)
    context.host.add_budgets(monitor)
    return monitor


FACTORY = register(Factory(type=TYPE, kind=Kind.EXTENSION, config_model=BudgetsConfig, create=create))
