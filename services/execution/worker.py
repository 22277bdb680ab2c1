"""The execution worker: order commands and bars in, execution reports out (paper venue)."""

from __future__ import annotations

from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.runtime.worker import Input, Worker, WorkerOptions

INPUTS = (Input("ORDERS", ("ord.cmd.>",)), Input("MARKET", ("md.bar.>",)))


def execution_worker(config: PaperVenueConfig, options: WorkerOptions | None = None) -> Worker:
    return Worker("execution", INPUTS, PaperVenue(config), options)
