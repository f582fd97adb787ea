//! Retrieve (ITI-68): a document's bytes, decrypted here or fetched from its custodian, after the
//! read is durably recorded.
//!
//! A document never changes once stored (a replacement is a new record), so every Binary is
//! version [`BINARY_VERSION`]. A conditional read whose `If-None-Match` names that version is
//! answered "not modified" without decrypting anything, and is still one ledger access entry,
//! marked `not-modified`: no content is disclosed, but the end user did open the document (from
//! the client's cache), the answer confirms the record exists and is unchanged, and the audit
//! trail must show every access. A record held by another hospital is always fetched from its
//! custodian, which checks the consent and records the read: a withdrawn consent must stop a
//! cached copy from being confirmed.

use medgate_ledger::{Entry, EntryBody};
use medgate_store::vault::StoredRecord;

use super::{Caller, Document, Gateway};
use crate::GatewayError;

/// The version of every Binary (`meta.versionId`, and the ETag `W/"1"`).
pub const BINARY_VERSION: &str = "1";

/// The answer to `GET /Binary/{id}`.
#[derive(Debug)]
pub struct Retrieved {
    /// When the record was stored (RFC 3339), for `Last-Modified` and `meta.lastUpdated`.
    pub created: String,
    /// The document, or `None` when the client's copy is current (304).
    pub document: Option<Document>,
}

/// Where the record a read names is, looked up once for the whole read.
#[derive(Debug)]
pub enum Located {
    /// In this vault (erased or not).
    Here(StoredRecord),
    /// Held by another member: the ledger's anchoring entry.
    Elsewhere(Entry),
    /// Nowhere this gateway knows of.
    Unknown,
}

impl Located {
    /// The document's content type, to choose the form of the answer before anything is read.
    pub fn content_type(&self) -> Option<&str> {
        match self {
            Located::Here(rec) => Some(&rec.content_type),
            Located::Elsewhere(Entry { body: EntryBody::RecordAnchored { content_type, .. }, .. }) => Some(content_type),
            Located::Elsewhere(_) | Located::Unknown => None,
        }
    }
}

impl Gateway {
    /// Finds record `id` (in the vault, else on the ledger as another member's) for a read by
    /// `caller`, on a blocking thread: the store's lookups wait while the ledger writer's
    /// transaction holds sled's lock, and must not stop a runtime thread meanwhile.
    pub async fn locate(&self, caller: &Caller, id: &str) -> Result<Located, GatewayError> {
        self.may_read(caller)?;
        let id = id.to_owned();
        self.off_runtime(move |g| {
            if let Some(rec) = g.vault.get(&id).map_err(GatewayError::from)? {
                return Ok(Located::Here(rec));
            }
            Ok(g.remote_record(&id)?.map_or(Located::Unknown, Located::Elsewhere))
        })
        .await
    }

    /// `GET /Binary/{id}`: the document `found` by [`Gateway::locate`], decrypted, after its
    /// read entry is durably recorded. `not_modified`: the client holds version
    /// [`BINARY_VERSION`] (`If-None-Match` matched).
    pub(crate) async fn read_binary(&self, caller: &Caller, id: &str, found: Located, not_modified: bool) -> Result<Retrieved, GatewayError> {
        self.may_read(caller)?;
        let rec = match found {
            Located::Here(rec) => rec,
            Located::Elsewhere(entry) => {
                let created = entry.time.clone();
                let doc = self.read_remote(caller, entry).await?;
                return Ok(Retrieved { created, document: (!not_modified).then_some(doc) });
            }
            Located::Unknown => return Err(no_record(id)),
        };
        if rec.erased.is_some() {
            return Err(erased(id));
        }
        let user = self.user_pseudonym(caller).await?;
        if not_modified {
            self.record_access(vec![self.read_entry(caller, &user, &rec, Some("not-modified"))]).await?;
            self.metrics.incr("records_not_modified");
            return Ok(Retrieved { created: rec.created, document: None });
        }
        let open = self.open(rec, true).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, None)]).await?;
        self.metrics.incr("records_read");
        let created = open.record.created.clone();
        Ok(Retrieved { created, document: Some(Document { content_type: open.record.content_type.clone(), bytes: open.document }) })
    }
}

/// The answer for a record id this gateway does not know (at most 64 characters of it).
pub(super) fn no_record(id: &str) -> GatewayError {
    GatewayError::NotFound(format!("no record {}", id.chars().take(64).collect::<String>()))
}

/// The answer for a record that was erased.
pub(super) fn erased(id: &str) -> GatewayError {
    GatewayError::Gone(format!("record {id} was erased; its hash stays on the ledger"))
}
