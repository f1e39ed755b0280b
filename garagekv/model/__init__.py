"""What the node stores, built on ``table``: access keys, buckets and aliases (full-copy tables),
their permissions and the helper that changes them together, index counters, and the K2V items
(``model.k2v``); ``model.Model`` wires every table and background worker once.

Layer 5: may import garagekv.util, db, net, rpc and table; never api, admin, cli or server.
See docs/architecture.md.
"""
