//! Plumbing shared by the lead platform's services, and nothing else: settings, telemetry,
//! Postgres pools and migrations, NATS/JetStream setup, the transactional outbox, the
//! consumer loop, gRPC serving and shutdown. Domain logic lives in the services.

pub mod consumer;
pub mod db;
pub mod event;
pub mod grpc;
pub mod nats;
pub mod outbox;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod token;

pub use settings::{ServiceName, Settings};
