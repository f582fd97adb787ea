//! Why a FHIR request was refused, and how that is rendered to the HIS.
//!
//! Boundary: this is the one place that maps a refusal to an HTTP status and a FHIR
//! OperationOutcome. `Display` is the full text for the gateway log; `to_outcome` is what the
//! HIS sees, which is the same text except for internal errors, whose details stay in the log.
//! Messages are built by this module's callers from element paths and fixed wording, never from
//! patient identifier values or document content.

use serde_json::{json, Value};

/// Why input was refused. Each variant maps to an HTTP status and a FHIR IssueType code.
///
/// | variant                | status | issue code      |
/// |------------------------|--------|-----------------|
/// | `MalformedJson`        | 400    | `structure`     |
/// | `BadParameter`         | 400    | `invalid`       |
/// | `Forbidden`            | 403    | `forbidden`     |
/// | `NotFound`             | 404    | `not-found`     |
/// | `MethodNotAllowed`     | 405    | `not-supported` |
/// | `Conflict`             | 409    | `conflict`      |
/// | `TooManyRequests`      | 429    | `throttled`     |
/// | `InFlight`             | 409    | `conflict`      |
/// | `NotAcceptable`        | 406    | `not-supported` |
/// | `Gone`                 | 410    | `deleted`       |
/// | `TooLarge`             | 413    | `too-long`      |
/// | `UnsupportedMediaType` | 415    | `not-supported` |
/// | `Required`             | 422    | `required`      |
/// | `Invalid`              | 422    | `invalid`       |
/// | `Unprocessable`        | 422    | each issue's    |
/// | `UnsupportedType`      | 422    | `not-supported` |
/// | `Integrity`            | 500    | `exception`     |
/// | `Internal`             | 500    | `exception`     |
/// | `Unavailable`          | 503    | `transient`     |
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// The body is not JSON, or breaks FHIR JSON rules below the resource level (duplicate
    /// property, trailing data).
    #[error("request body is not valid FHIR JSON: {0}")]
    MalformedJson(String),
    /// A required element is missing; `path` is its FHIRPath-style location.
    #[error("{path}: required element is missing")]
    Required {
        /// Location of the missing element, e.g. `DocumentReference.status`.
        path: String,
    },
    /// An element is present but wrong (JSON type, value set, format, reference).
    #[error("{path}: {reason}")]
    Invalid {
        /// Location of the offending element, e.g. `Bundle.entry[1].resource.content[0].attachment.contentType`.
        path: String,
        /// What is wrong and, where useful, what to send instead.
        reason: String,
    },
    /// Several elements break the rules of the profile the resource claims (IHE MHD, per
    /// option): every one is named, each as its own issue of the OperationOutcome.
    #[error("{}", Issue::joined(.0))]
    Unprocessable(Vec<Issue>),
    /// A resource type this endpoint does not accept.
    #[error("{path}: {reason}")]
    UnsupportedType {
        /// Location of the offending `resourceType`.
        path: String,
        /// Which type was expected.
        reason: String,
    },
    /// The request body is larger than the configured limit (checked before parsing).
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A search or path parameter is malformed.
    #[error("{0}")]
    BadParameter(String),
    /// The request's Content-Type is not FHIR JSON.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The HTTP method is not supported on this path.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// The resource does not exist (or the requester may not learn that it does).
    #[error("not found: {0}")]
    NotFound(String),
    /// None of the representations the client accepts (`Accept`, `_format`) can be served.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The resource existed and was erased (crypto-shredded).
    #[error("gone: {0}")]
    Gone(String),
    /// The requester is not allowed to do this (no consent, unknown client certificate, ...).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request conflicts with the current state (e.g. a masterIdentifier reused for other content).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The same request (same idempotency key or master identifier) is being processed right
    /// now; the answer tells the client when to retry ([`FhirError::retry_after`]).
    #[error("conflict: {0}")]
    InFlight(String),
    /// A dependency (ledger, peer gateway, HSM) is temporarily unavailable; retrying may succeed.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The client has used up its share of the gateway (requests per second, connections);
    /// other clients are still served. The answer says when to retry.
    #[error("too many requests: {message}")]
    TooManyRequests {
        /// What limit was reached.
        message: String,
        /// Seconds until the client may send again.
        retry_after: u32,
    },
    /// A fault inside the gateway; the text is logged but not sent to the HIS.
    #[error("internal error: {0}")]
    Internal(String),
    /// A stored record failed its integrity check (ciphertext, wrapped key or sealed metadata
    /// altered); it is not served. Carries the record id.
    #[error("record {0} failed its integrity check: its stored ciphertext, wrapped key or metadata was altered; it is not served")]
    Integrity(String),
}

impl FhirError {
    /// HTTP status code for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            FhirError::MalformedJson(_) | FhirError::BadParameter(_) => 400,
            FhirError::Forbidden(_) => 403,
            FhirError::NotFound(_) => 404,
            FhirError::MethodNotAllowed(_) => 405,
            FhirError::NotAcceptable(_) => 406,
            FhirError::Conflict(_) | FhirError::InFlight(_) => 409,
            FhirError::Gone(_) => 410,
            FhirError::TooLarge { .. } => 413,
            FhirError::UnsupportedMediaType(_) => 415,
            FhirError::Required { .. }
            | FhirError::Invalid { .. }
            | FhirError::Unprocessable(_)
            | FhirError::UnsupportedType { .. } => 422,
            FhirError::Internal(_) | FhirError::Integrity(_) => 500,
            FhirError::TooManyRequests { .. } => 429,
            FhirError::Unavailable(_) => 503,
        }
    }

    /// FHIR IssueType code (<http://hl7.org/fhir/issue-type>) for this refusal.
    pub fn issue_code(&self) -> &'static str {
        match self {
            FhirError::MalformedJson(_) => "structure",
            FhirError::Required { .. } => "required",
            FhirError::Unprocessable(issues) => issues.first().map_or("invalid", |i| i.code),
            FhirError::Invalid { .. } | FhirError::BadParameter(_) => "invalid",
            FhirError::UnsupportedType { .. }
            | FhirError::UnsupportedMediaType(_)
            | FhirError::MethodNotAllowed(_)
            | FhirError::NotAcceptable(_) => "not-supported",
            FhirError::TooLarge { .. } => "too-long",
            FhirError::NotFound(_) => "not-found",
            FhirError::Gone(_) => "deleted",
            FhirError::Forbidden(_) => "forbidden",
            FhirError::Conflict(_) | FhirError::InFlight(_) => "conflict",
            FhirError::Unavailable(_) => "transient",
            FhirError::TooManyRequests { .. } => "throttled",
            FhirError::Internal(_) | FhirError::Integrity(_) => "exception",
        }
    }

    /// Seconds after which a retry may succeed, for the `Retry-After` header, when the refusal
    /// says so: a request still in flight finishes within about a second.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            FhirError::InFlight(_) => Some(1),
            FhirError::TooManyRequests { retry_after, .. } => Some((*retry_after).max(1)),
            _ => None,
        }
    }

    /// FHIRPath-style location of the offending element, when there is one.
    pub fn expression(&self) -> Option<&str> {
        match self {
            FhirError::Required { path }
            | FhirError::Invalid { path, .. }
            | FhirError::UnsupportedType { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The OperationOutcome sent to the HIS for this refusal.
    pub fn to_outcome(&self) -> Value {
        if let FhirError::Unprocessable(issues) = self {
            let issue: Vec<Value> = issues
                .iter()
                .map(|i| json!({"severity": "error", "code": i.code, "diagnostics": i.to_string(), "expression": [i.path]}))
                .collect();
            return json!({"resourceType": "OperationOutcome", "issue": issue});
        }
        let severity = match self {
            FhirError::MalformedJson(_) | FhirError::Internal(_) => "fatal",
            _ => "error",
        };
        let diagnostics = match self {
            FhirError::Internal(_) => "internal error in the gateway; the details are in its log".to_owned(),
            other => other.to_string(),
        };
        operation_outcome(severity, self.issue_code(), &diagnostics, self.expression())
    }

    /// An [`FhirError::Invalid`] at `path`.
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> FhirError {
        FhirError::Invalid { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn required(path: impl Into<String>) -> FhirError {
        FhirError::Required { path: path.into() }
    }
}

/// One problem found by a profile check: its IssueType code (`required`, `invalid`,
/// `not-supported`), the element's FHIRPath-style location, and what is wrong (fixed wording
/// and element names, never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: &'static str,
    pub path: String,
    pub reason: String,
}

impl Issue {
    /// A missing element required by `why` (the profile).
    pub fn required(path: impl Into<String>, why: &str) -> Issue {
        Issue { code: "required", path: path.into(), reason: format!("required by {why}, missing") }
    }

    /// An element present but wrong.
    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Issue {
        Issue { code: "invalid", path: path.into(), reason: reason.into() }
    }

    fn joined(issues: &[Issue]) -> String {
        issues.iter().map(Issue::to_string).collect::<Vec<_>>().join("; ")
    }
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A FHIR OperationOutcome resource with one issue: `severity` (`fatal`, `error`, `warning` or
/// `information`), IssueType `code`, `diagnostics` text and an optional FHIRPath `expression`.
/// This is the only way errors are rendered to the HIS.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({
        "severity": severity,
        "code": code,
        "diagnostics": diagnostics,
    });
    if let (Some(expression), Some(obj)) = (expression, issue.as_object_mut()) {
        obj.insert("expression".into(), json!([expression]));
    }
    json!({
        "resourceType": "OperationOutcome",
        "issue": [issue],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_shape_with_expression() {
        let o = operation_outcome("error", "invalid", "bad thing", Some("DocumentReference.status"));
        assert_eq!(o["resourceType"], "OperationOutcome");
        let issues = o["issue"].as_array().expect("issue array");
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0]["severity"], "error");
        assert_eq!(issues[0]["code"], "invalid");
        assert_eq!(issues[0]["diagnostics"], "bad thing");
        assert_eq!(issues[0]["expression"], json!(["DocumentReference.status"]));
    }

    #[test]
    fn outcome_without_expression_omits_it() {
        let o = operation_outcome("information", "informational", "ok", None);
        assert!(o["issue"][0].get("expression").is_none());
        assert_eq!(o["issue"][0]["severity"], "information");
    }

    #[test]
    fn status_and_code_table() {
        let cases: Vec<(FhirError, u16, &str)> = vec![
            (FhirError::MalformedJson("x".into()), 400, "structure"),
            (FhirError::BadParameter("x".into()), 400, "invalid"),
            (FhirError::Forbidden("x".into()), 403, "forbidden"),
            (FhirError::NotFound("x".into()), 404, "not-found"),
            (FhirError::MethodNotAllowed("x".into()), 405, "not-supported"),
            (FhirError::NotAcceptable("x".into()), 406, "not-supported"),
            (FhirError::Conflict("x".into()), 409, "conflict"),
            (FhirError::InFlight("x".into()), 409, "conflict"),
            (FhirError::Gone("x".into()), 410, "deleted"),
            (FhirError::TooLarge { limit: 10 }, 413, "too-long"),
            (FhirError::UnsupportedMediaType("x".into()), 415, "not-supported"),
            (FhirError::required("A.b"), 422, "required"),
            (FhirError::invalid("A.b", "x"), 422, "invalid"),
            (FhirError::UnsupportedType { path: "A".into(), reason: "x".into() }, 422, "not-supported"),
            (FhirError::Internal("x".into()), 500, "exception"),
            (FhirError::Unavailable("x".into()), 503, "transient"),
            (FhirError::TooManyRequests { message: "x".into(), retry_after: 2 }, 429, "throttled"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.issue_code(), code, "{err:?}");
            let o = err.to_outcome();
            assert_eq!(o["resourceType"], "OperationOutcome");
            assert_eq!(o["issue"][0]["code"], code);
            assert_eq!(err.retry_after().is_some(), matches!(err, FhirError::InFlight(_) | FhirError::TooManyRequests { .. }), "{err:?}");
        }
    }

    #[test]
    fn outcome_carries_path_as_expression() {
        let err = FhirError::invalid("DocumentReference.content[0].attachment.data", "not base64");
        let o = err.to_outcome();
        assert_eq!(o["issue"][0]["expression"][0], "DocumentReference.content[0].attachment.data");
        assert_eq!(o["issue"][0]["diagnostics"], "DocumentReference.content[0].attachment.data: not base64");
    }

    #[test]
    fn a_profile_refusal_names_every_element_as_its_own_issue() {
        let err = FhirError::Unprocessable(vec![
            Issue::required("Bundle.entry[1].resource.masterIdentifier", "IHE.MHD.Minimal.DocumentReference"),
            Issue::invalid("Bundle.entry[0].resource.mode", "must be 'working'"),
        ]);
        assert_eq!((err.status(), err.issue_code()), (422, "required"));
        let o = err.to_outcome();
        assert_eq!(o["issue"].as_array().map(Vec::len), Some(2));
        assert_eq!(o["issue"][0]["expression"][0], "Bundle.entry[1].resource.masterIdentifier");
        assert_eq!(o["issue"][0]["code"], "required");
        assert_eq!(o["issue"][1]["code"], "invalid");
        assert_eq!(o["issue"][1]["diagnostics"], "Bundle.entry[0].resource.mode: must be 'working'");
        assert!(err.to_string().contains("masterIdentifier: required by IHE.MHD.Minimal.DocumentReference, missing; Bundle.entry[0]"), "{err}");
    }

    #[test]
    fn internal_detail_stays_out_of_the_outcome() {
        let err = FhirError::Internal("sled: io error at /var/lib/medgate".into());
        assert!(err.to_string().contains("/var/lib/medgate"));
        let o = err.to_outcome();
        assert_eq!(o["issue"][0]["severity"], "fatal");
        assert!(!o.to_string().contains("/var/lib/medgate"));
    }
}
