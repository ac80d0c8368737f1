//! The data plane, in data-flow order: [`source`] reads records from Kafka,
//! [`decode`] turns them into clicks, [`transform`] runs the chain of
//! transform plugins,
//! [`store`] writes events, dead letters and offsets to PostgreSQL in one
//! transaction, [`aggregate`] turns stored events into aggregate rows, and
//! [`index`] publishes those rows to the search server. No stage imports
//! another: what passes between them is in [`record`], and
//! `runtime::pipeline` joins them.

pub mod record;

pub mod source;

pub mod decode;

pub mod transform;

pub mod store;

pub mod aggregate;

pub mod index;
