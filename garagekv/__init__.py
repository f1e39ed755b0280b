"""garagekv: a distributed key/key/value store serving Garage's K2V HTTP API.

``garagekv.server`` wires one node; the packages below it are layered (util -> db -> net -> rpc
-> table -> model -> api -> admin -> cli, with ``client`` and ``bench`` beside them), see
docs/architecture.md.
"""
