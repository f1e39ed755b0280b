"""The K2V HTTP API server: routing (``endpoint``), SigV4 verification (``sigv4``), the order of
checks and dispatch (``server``), error bodies (``errors``), CORS, and the handlers
(``api.handlers``).

The behaviour it implements is docs/k2v-api.md.

Layer 6: may import garagekv.util, db, net, rpc, table and model; in practice it reaches
storage and the cluster only through garagekv.model. Never admin, cli or server.
"""
