//! The gateway service's one error type, [`GatewayError`]. Each listener turns it into its own
//! answer in one place: the HIS API into a FHIR OperationOutcome (`api::outcome`), the peer
//! listener into a status and a reason code (`peer::refusal`), the admin socket into a status
//! and a line of text. Internal details go to the log, never to a client.

use medgate_fhir::FhirError;
use medgate_hsm::HsmError;
use medgate_store::StoreError;

/// Why the gateway refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// What the HIS sent breaks a FHIR rule (the FHIR layer's own refusal and status).
    #[error(transparent)]
    Request(#[from] FhirError),
    /// Not allowed (403). For a peer, a reason code.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such thing here (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// It existed and was erased (410).
    #[error("gone: {0}")]
    Gone(String),
    /// Conflicts with the current state (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The same request (same idempotency key or master identifier) is being processed right
    /// now (409, with `Retry-After`).
    #[error("conflict: {0}")]
    InFlight(String),
    /// A malformed request from a peer gateway or an operator (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A dependency (ledger, peer gateway, HSM) is unavailable; retrying may succeed (503).
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A stored record failed its integrity check; it is not served (500). Carries its id.
    #[error("record {0} failed its integrity check: its stored ciphertext, wrapped key or metadata was altered; it is not served")]
    Integrity(String),
    /// A fault inside the gateway (500); the text is for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// A FHIR element that is present but wrong.
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> GatewayError {
        GatewayError::Request(FhirError::invalid(path, reason))
    }

    /// An internal fault.
    pub fn internal(e: impl std::fmt::Display) -> GatewayError {
        GatewayError::Internal(e.to_string())
    }

    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Request(f) => f.status(),
            GatewayError::BadRequest(_) => 400,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::Conflict(_) | GatewayError::InFlight(_) => 409,
            GatewayError::Gone(_) => 410,
            GatewayError::Integrity(_) | GatewayError::Internal(_) => 500,
            GatewayError::Unavailable(_) => 503,
        }
    }

    /// The message without its kind (what an operator's command prints after the status).
    pub fn detail(&self) -> String {
        match self {
            GatewayError::Forbidden(m)
            | GatewayError::NotFound(m)
            | GatewayError::Gone(m)
            | GatewayError::Conflict(m)
            | GatewayError::InFlight(m)
            | GatewayError::BadRequest(m)
            | GatewayError::Unavailable(m)
            | GatewayError::Internal(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> GatewayError {
        match e {
            StoreError::Integrity(id) => {
                tracing::error!(record = %id, "stored record failed its integrity check; not served");
                GatewayError::Integrity(id)
            }
            StoreError::Hsm(h) => h.into(),
            StoreError::Conflict(m) => GatewayError::Conflict(m),
            other => GatewayError::internal(other),
        }
    }
}

impl From<HsmError> for GatewayError {
    fn from(e: HsmError) -> GatewayError {
        match e {
            HsmError::Unavailable(_) => GatewayError::Unavailable("the HSM is unavailable; retry later".into()),
            other => GatewayError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for GatewayError {
    fn from(e: tokio::task::JoinError) -> GatewayError {
        GatewayError::internal(e)
    }
}
