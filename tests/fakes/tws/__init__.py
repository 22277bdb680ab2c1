"""A loopback fake of the TWS API socket protocol (IB Gateway / TWS) that ib_async accepts.

``TwsFake(clock)`` serves it on a free port; point ``ib_async.IB.connectAsync`` at
``127.0.0.1:<port>`` with any client id. ``python -m tests.fakes.tws --port 4002`` serves
it by hand.
"""

from tests.fakes.tws.server import TwsFake

__all__ = ["TwsFake"]
