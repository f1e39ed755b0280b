"""One module per group of K2V endpoints (items, batches, index, PollRange); ``api.router`` is
the only importer. Each handler gets an authenticated ``api.context.RequestContext``.

Part of the api layer: may import garagekv.api (context, json_fields), garagekv.model and
garagekv.util. Behaviour: docs/k2v-api.md §5 and §8.
"""
