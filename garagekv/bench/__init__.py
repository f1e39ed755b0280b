"""``garagekv bench``: a closed-loop load generator for K2V endpoints (and etcd's JSON gateway).

Modules:

- ``http``: a lean HTTP/1.1 keep-alive client on asyncio transports (incremental response parser);
- ``hist``: a mergeable log-linear latency histogram with percentiles;
- ``workload``: what each scenario sends (K2V InsertItem/ReadItem/ReadBatch/PollItem, etcd put/range)
  and how a request is signed (SigV4 with a cached signing key and date);
- ``runner``: connections, phases (warmup, measure), worker processes, prefill, server CPU sampling;
- ``nullserver``: the do-nothing HTTP server behind ``--selftest``;
- ``report``: text, Markdown and JSON output, the side-by-side table and the optional plot.
"""
