"""The Hulykvs-compatible HTTP API (docs/hulykvs.md): Huly's key-value service served from K2V items.

Modules: ``router`` (paths to handlers), ``handlers`` (one function per request kind), ``auth``
(Huly's HS256 JWTs), ``conditions`` (If-Match / If-None-Match), ``mapping`` (workspace, namespace
and key to a K2V item), ``store`` (the storage interface and its K2V implementation), ``server``
(the listener: CORS, probes, errors, metrics).
"""
