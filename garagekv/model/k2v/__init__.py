"""K2V items on top of the generic tables: the DVVS item and its merge (``item``), causality
tokens (``causality``), the table schemas and their change hook (``schema``), range rules
(``range``), PollRange seen markers (``seen``), local subscriptions (``sub``), the work done on a
storage node itself (``store``) and the cluster-wide service the API calls (``rpc``).

Part of the model layer: may import garagekv.util, db, net, rpc, table and garagekv.model;
never api or above. See docs/architecture.md §2-§4 and docs/k2v-api.md §6.
"""
