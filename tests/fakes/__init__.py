"""In-memory fakes of the ports, for unit tests, one module per context over one shared fake
database. tests/contract runs the same assertions against these and the real adapters, so the
fakes cannot drift from the real thing."""

from tests.fakes.balances import FakeBalanceStore, FakeOverlay
from tests.fakes.db import FakeDatabase, FakeUnitOfWork
from tests.fakes.ledger import FakeLedgerReads, FakeLedgerUnitOfWork, FakeSellerStore
from tests.fakes.payments import (
    FakeCaptureStore,
    FakeIds,
    FakePaymentStore,
    FakePaymentViews,
    FakeRetryQueue,
    FakeRetryUnitOfWork,
    ScriptedAuthorizationGateway,
    ScriptedCaptureGateway,
)
from tests.fakes.treasury import FakeTreasuryReads, FakeTreasuryUnitOfWork, LostAnswer, ScriptedBank

__all__ = [
    "FakeBalanceStore",
    "FakeCaptureStore",
    "FakeDatabase",
    "FakeIds",
    "FakeLedgerReads",
    "FakeLedgerUnitOfWork",
    "FakeOverlay",
    "FakePaymentStore",
    "FakePaymentViews",
    "FakeRetryQueue",
    "FakeRetryUnitOfWork",
    "FakeSellerStore",
    "FakeTreasuryReads",
    "FakeTreasuryUnitOfWork",
    "FakeUnitOfWork",
    "LostAnswer",
    "ScriptedAuthorizationGateway",
    "ScriptedBank",
    "ScriptedCaptureGateway",
]
