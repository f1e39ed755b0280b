"""All of a node's tables and the services built on them, wired once.

Full-copy tables (keys, buckets, aliases) live on every node; K2V items and their index
counters are sharded by the ring. The counter insert queue's worker and the expiry worker run
for the node's life.
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

from garagekv.consensus import Acceptor, ConsensusGcWorker, ConsensusMetrics, LayoutPlacement, Proposer
from garagekv.db.env import Database
from garagekv.db.writer import GroupCommitWriter
from garagekv.model.bucket_table import BucketAliasSchema, BucketSchema
from garagekv.model.helper import MetaHelper
from garagekv.model.k2v.conditional import ConditionalK2V, K2VMachine
from garagekv.model.k2v.expiry import ExpiryWorker
from garagekv.model.k2v.expiry_index import ExpiryIndex
from garagekv.model.k2v.reservations import ReservationSweeper
from garagekv.model.k2v.rpc import K2VService
from garagekv.model.k2v.schema import CounterSchema, ItemSchema
from garagekv.model.k2v.store import K2VStore
from garagekv.model.k2v.stored import BucketNumbers, ItemStoredForm
from garagekv.model.k2v.sub import SubscriptionManager
from garagekv.model.key_table import KeySchema
from garagekv.net.identity import node_number
from garagekv.rpc.system import System
from garagekv.table.anti_entropy import SyncCoordinator, TableSyncer
from garagekv.table.data import TableData
from garagekv.table.gc import TableGc
from garagekv.table.queue import InsertQueue
from garagekv.table.replication import FullReplication, ShardedReplication
from garagekv.table.schema import Entry, TableSchema
from garagekv.table.sums_worker import RangeSumsWorker
from garagekv.table.table import Table
from garagekv.util.background import BackgroundRunner, Worker
from garagekv.util.config import DEFAULT_MAX_ITEM_BYTES, Config

E = TypeVar("E", bound=Entry)


class Model:
    def __init__(self, config: Config, db: Database, writer: GroupCommitWriter, system: System) -> None:
        timeout = min(config.rpc_timeout_msec / 1000, 30.0)
        sharded = ShardedReplication(system.layout)
        full = FullReplication(system.layout)

        # The range sums' key (table/range_sums.py): the same on every node, unknown to clients.
        sums_key = hashlib.blake2b(b"garagekv range sums", key=config.rpc_secret_bytes or b"", digest_size=32).digest()

        def table(schema: TableSchema[E], replication: ShardedReplication | FullReplication) -> Table[E]:
            return Table(
                TableData(db, writer, schema, sums_key),
                replication,
                system.netapp,
                system.registry,
                peers=system,
                timeout=timeout,
            )

        self.keys = table(KeySchema(), full)
        self.buckets = table(BucketSchema(), full)
        self.aliases = table(BucketAliasSchema(), full)
        self.counters = table(CounterSchema(), sharded)
        self.counter_queue = InsertQueue(db, writer, self.counters)
        self.subs = SubscriptionManager()
        node = node_number(system.node_id)
        self.expiry_index = ExpiryIndex(db)
        item_schema = ItemSchema(
            node,
            self.subs,
            db.tree("k2v:local_counters"),
            self.counter_queue.replace_in,
            self.expiry_index,
            ItemStoredForm(BucketNumbers(db)),
        )
        #: The items table's schema, as its own type (the counter repair writes its local counters).
        self.item_schema = item_schema
        self.items = table(item_schema, sharded)
        max_item = config.k2v_api.max_item_bytes if config.k2v_api is not None else DEFAULT_MAX_ITEM_BYTES
        self.store = K2VStore(db, writer, node, self.items.data, self.subs, max_item)
        item_schema.on_change_in = self.store.poll_index.updated_in
        self.expiry = ExpiryWorker(self.expiry_index, self.store, self.items)
        self.k2v = K2VService(self.store, self.items, self.counters, system.netapp, system.registry, timeout)
        # Consensus for conditional operations (docs/consensus.md §10): one acceptor per node,
        # one proposer, and the GC of acceptor state for partitions that left this node.
        self.consensus_metrics = ConsensusMetrics()
        machine = K2VMachine(self.items.data, self.store.clock, node)
        placement = LayoutPlacement(system.layout)
        self.acceptor = Acceptor(db, writer, machine, self.consensus_metrics)
        self.acceptor.register(system.registry)
        registry, node_id = system.registry, system.node_id
        self.proposer = Proposer(
            placement,
            system.netapp,
            machine,
            metrics=self.consensus_metrics,
            timeout=timeout,
            local=lambda path, body: registry.dispatch(node_id, path, body),
        )
        self.consensus_gc = ConsensusGcWorker(db, writer, placement)
        system.layout.listeners.append(lambda _history: self.consensus_gc.notify())
        self.conditional = ConditionalK2V(
            self.store,
            self.proposer,
            self.items.replication,
            self.items.order,
            system.netapp,
            system.registry,
            system.node_id,
            timeout,
            system.is_up,
        )
        self.k2v.conditional = self.conditional
        self.k2v.flush_counters = self.counter_queue.flush
        # Times reserved by rounds that ended without settling them (model/k2v/reservations.py):
        # a round writing nothing on the key, run here, settles them.
        self.reservation_sweeper = ReservationSweeper(self.store.clock, writer, self.conditional.settle_round)
        self.helper = MetaHelper(
            self.keys, self.buckets, self.aliases, self.k2v.bucket_is_empty, allow_punycode=config.allow_punycode
        )
        self.tables = [self.keys, self.buckets, self.aliases, self.counters, self.items]
        # Tombstone GC only for the sharded K2V tables: deleted keys and buckets stay forever.
        self.gcs = [
            TableGc(t, db, writer, config.tombstone_gc_delay_sec, system.registry) for t in (self.items, self.counters)
        ]
        # Anti-entropy: a syncer and a range sums rebuilder per table; the coordinator raises
        # this node's sync tracker once every table completed a full sync.
        self.sync_coordinator = SyncCoordinator(system.layout)
        self.sums_workers = [RangeSumsWorker(t.data) for t in self.tables]
        self.syncers = [
            TableSyncer(
                t,
                system.layout,
                system.registry,
                self.sync_coordinator,
                interval=config.sync_interval_sec,
                startup_delay=config.sync_startup_delay_sec,
            )
            for t in self.tables
        ]
        self.background = BackgroundRunner()

    async def start(self) -> None:
        self.background.spawn(self.counter_queue)
        self.background.spawn(self.consensus_gc)
        self.background.spawn(self.reservation_sweeper)
        self.background.spawn(self.expiry)
        for gc in self.gcs:
            self.background.spawn(gc)
        workers: list[Worker] = [*self.sums_workers, *self.syncers]
        for worker in workers:
            self.background.spawn(worker)

    async def stop(self) -> None:
        await self.background.stop()
