//! IHE ATNA Record Audit Event (ITI-20) for medgate: every audited ledger entry this gateway
//! writes goes to the hospital's audit record repository as a DICOM audit message (DICOM PS3.15
//! A.5, with the IHE BALP and MHD codes) in an RFC 5424 syslog message, over RFC 5425 syslog/TLS
//! with mutual TLS, through a bounded on-disk queue that keeps the order and loses nothing while
//! the repository is down.
//!
//! Boundary: a self-contained unit. It depends on no other medgate crate: events come in as plain
//! values ([`AuditEvent`]) with their ledger [`Position`]; the ledger is read back through the
//! [`LedgerSource`] trait when the exporter catches up; the client key arrives as a rustls
//! `SigningKey` (which may sign in the HSM) or `ResolvesClientCert`; the queue is the [`Queue`]
//! trait, with a file implementation ([`FileQueue`]). Messages carry pseudonyms, codes and ids
//! only: no patient identifier, name, document metadata or content.

pub mod dicom;
pub mod event;
pub mod exporter;
pub mod queue;
pub mod syslog;
pub mod transport;

pub use event::{Access, AuditEvent, EventDetail, EventError, KeyAction, Position, Requester};
pub use exporter::{AtnaError, Config, Exporter, LedgerSource, Stats};
pub use queue::file::FileQueue;
pub use queue::{NewMessage, Queue, QueueError, QueuedMessage};
pub use transport::{ClientIdentity, TlsClient, TlsError};
