"""``garagekv bench``: a closed-loop load generator for K2V endpoints (and etcd's JSON gateway).

Modules:

- ``http``: a lean HTTP/1.1 keep-alive client on asyncio transports (incremental response parser);
- ``hist``: a mergeable log-linear latency histogram with percentiles;
- ``workload``: what each scenario sends (K2V InsertItem/ReadItem/ReadBatch/PollItem, conditional
  writes and partition transactions; etcd put/range/txn; Hulykvs PUT/GET with a bearer token)
  and how a request is signed (SigV4 with a cached signing key and date);
- ``config``: what a run is asked to do (``BenchConfig``), validated before anything connects;
- ``conn``: one connection with its target, reconnecting sends, error codes;
- ``worker``: the scenario loops of one process, phases (warmup, measure) and recorded stats;
- ``prefill``: prefilling the keyspace, the poll scenario's hot items, the counter's item and its
  check at the end;
- ``runner``: one process or several on a shared clock, progress lines, server CPU sampling;
- ``summary``: merged histograms into ops/s, latency percentiles and CPU per operation;
- ``nullserver``: the do-nothing HTTP server behind ``--selftest``;
- ``report``: text, Markdown and JSON output, the side-by-side table and the optional plot.

How to use it and what it measured: docs/performance.md. It ranks with ``garagekv.server`` (it
may import any layer but cli) yet imports only garagekv.util (and PyJWT to mint Huly tokens): it
drives a server from outside, over HTTP, like any client.
"""
