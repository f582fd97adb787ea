//! Retrieve (ITI-68): a document's bytes, decrypted here or fetched from its custodian, after the
//! read is durably recorded.

use super::{Caller, Document, Gateway};
use crate::GatewayError;

impl Gateway {
    /// `GET /Binary/{id}`: the document, decrypted, after its read entry is durably recorded.
    /// A record held by another hospital is fetched from it (consent checked there).
    pub async fn read_binary(&self, caller: &Caller, id: &str) -> Result<Document, GatewayError> {
        self.may_read(caller)?;
        if self.vault.get(id).map_err(GatewayError::from)?.is_none() {
            if let Some(entry) = self.remote_record(id)? {
                return self.read_remote(caller, entry).await;
            }
        }
        let rec = self.stored(id)?;
        let user = self.user_pseudonym(caller).await?;
        let open = self.open(rec, true).await?;
        self.record_access(vec![self.read_entry(caller, &user, &open.record, None)]).await?;
        self.metrics.incr("records_read");
        Ok(Document { content_type: open.record.content_type.clone(), bytes: open.document })
    }
}
