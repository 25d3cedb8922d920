//! Plumbing shared by the lead platform's services, and nothing else: settings, telemetry,
//! Postgres pools and migrations, NATS/JetStream setup, the transactional outbox, the
//! consumer loop, gRPC serving and shutdown, and outbound HTTP to URLs people type in
//! (`egress`). Domain logic lives in the services.

pub mod auth;
pub mod consumer;
pub mod db;
pub mod deadletter;
pub mod egress;
pub mod error;
pub mod grpc;
pub mod nats;
pub mod org_settings;
pub mod outbox;
pub mod roles;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod visibility;

pub use settings::{ServiceName, Settings};

/// Every program built on the platform (the services, the all-in-one binary, the tests and the
/// bench) allocates through mimalloc. A consumer allocates and frees per message across
/// threads (client buffers, header maps, decoded events); with glibc's allocator that was an
/// eighth of the machine's CPU during a backlog drain of broadcast statuses (its
/// `malloc_consolidate` alone 2%), and mimalloc took 12% off the drain's CPU per event
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
