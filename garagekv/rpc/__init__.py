"""The cluster plane on top of ``net``: named RPC endpoints, call batching, quorum helpers,
membership and gossip (``system``), and the cluster layout (``rpc.layout``).

Layer 3: may import garagekv.util, garagekv.db and garagekv.net; never table or above.
See docs/architecture.md §5.
"""
