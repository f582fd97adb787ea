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

impl Gateway {
    /// The content type of document `id` (as stored here, or as the ledger says for a record
    /// another hospital holds), to choose the form of the answer before anything is read;
    /// `None` when no such record is known (the read then says why).
    pub fn binary_type(&self, caller: &Caller, id: &str) -> Result<Option<String>, GatewayError> {
        self.may_read(caller)?;
        if let Some(rec) = self.vault.get(id).map_err(GatewayError::from)? {
            return Ok(Some(rec.content_type));
        }
        Ok(self.remote_record(id)?.and_then(|e| match e.body {
            medgate_ledger::EntryBody::RecordAnchored { content_type, .. } => Some(content_type),
            _ => None,
        }))
    }

    /// `GET /Binary/{id}`: the document, decrypted, after its read entry is durably recorded.
    /// `not_modified`: the client holds version [`BINARY_VERSION`] (`If-None-Match` matched).
    pub async fn read_binary(&self, caller: &Caller, id: &str, not_modified: bool) -> Result<Retrieved, GatewayError> {
        self.may_read(caller)?;
        if self.vault.get(id).map_err(GatewayError::from)?.is_none() {
            if let Some(entry) = self.remote_record(id)? {
                let created = entry.time.clone();
                let doc = self.read_remote(caller, entry).await?;
                return Ok(Retrieved { created, document: (!not_modified).then_some(doc) });
            }
        }
        let rec = self.stored(id)?;
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
