"""Consensus: single-decree Paxos per operation on one partition key (docs/consensus.md).

Conditional writes, partition transactions and linearizable reads of one partition key are
ordered by a Paxos round among the partition's storage nodes: ``Proposer`` runs rounds,
``Acceptor`` answers them and keeps its promises in LMDB. What a round decides and how a
decision is stored come from a ``StateMachine`` supplied by the layer above, so this package
knows nothing of K2V items.

Layer rule: imports util, db, net and rpc only (the rank of ``table``); never table or model.
"""

from garagekv.consensus.acceptor import Acceptor
from garagekv.consensus.ballot import ZERO_BALLOT, Ballot, BallotClock
from garagekv.consensus.gc import ConsensusGcWorker
from garagekv.consensus.machine import Decision, StateMachine
from garagekv.consensus.messages import Proposal
from garagekv.consensus.metrics import ConsensusMetrics
from garagekv.consensus.placement import LayoutPlacement, Placement
from garagekv.consensus.proposer import Proposer, ReadTooLarge, Transport
from garagekv.rpc.messages import MalformedMessage

__all__ = [
    "ZERO_BALLOT",
    "Acceptor",
    "Ballot",
    "BallotClock",
    "ConsensusGcWorker",
    "ConsensusMetrics",
    "Decision",
    "LayoutPlacement",
    "MalformedMessage",
    "Placement",
    "Proposal",
    "Proposer",
    "ReadTooLarge",
    "StateMachine",
    "Transport",
]
