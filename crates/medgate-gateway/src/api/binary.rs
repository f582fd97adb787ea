//! ITI-68 Retrieve Document on `GET /Binary/{id}`: the bytes with their own Content-Type, or a
//! FHIR Binary resource when the client asks for FHIR JSON; `ETag`, `Last-Modified`, and 304
//! for an `If-None-Match` naming the current version.
//!
//! Boundary: the request's headers and parameters in, one HTTP response out; the gateway
//! decides access and records it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use hyper::{Response, StatusCode};

use super::representation::{binary_form, BinaryForm, Rep};
use super::{Api, Resp};
use crate::gateway::{Caller, BINARY_VERSION};
use crate::GatewayError;

/// The weak ETag of a version (R4 http.html: `W/"<versionId>"`).
fn etag(version: &str) -> String {
    format!("W/\"{version}\"")
}

/// Does an `If-None-Match` value (a list of entity tags, or `*`) name `version`? Weak
/// comparison (RFC 9110 13.1.2): `W/"1"` and `"1"` both match version 1.
pub(super) fn names_version(if_none_match: &str, version: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| {
        tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(version)
    })
}

/// `Last-Modified` from an RFC 3339 time.
fn http_date(rfc3339: &str) -> Option<HeaderValue> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    HeaderValue::from_str(&httpdate::fmt_http_date(t.into())).ok()
}

impl Api {
    /// Serves `GET /Binary/{id}`.
    pub(super) async fn retrieve(&self, caller: &Caller, id: &str, rep: &Rep, accept: Option<&str>, if_none_match: Option<&str>) -> Result<Resp, GatewayError> {
        let gw = &self.gateway;
        // The form is chosen before anything is read, so a 406 records no access.
        let found = gw.locate(caller, id).await?;
        let form = match found.content_type() {
            Some(ct) => binary_form(rep, accept, ct)?,
            None => BinaryForm::Raw,
        };
        let not_modified = if_none_match.is_some_and(|h| names_version(h, BINARY_VERSION));
        let got = gw.read_binary(caller, id, found, not_modified).await?;
        let r = match (got.document, form) {
            (None, _) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            }
            (Some(doc), BinaryForm::Raw) => {
                let content_type = HeaderValue::from_str(&doc.content_type);
                // The body owns the zeroizing plaintext: no copy, wiped once hyper has sent it.
                let mut r = Response::new(Full::new(Bytes::from_owner(doc.bytes)));
                if let Ok(v) = content_type {
                    r.headers_mut().insert(CONTENT_TYPE, v);
                }
                r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
                r
            }
            (Some(doc), BinaryForm::Resource) => {
                let mut resource = medgate_fhir::binary_resource(id, BINARY_VERSION, &got.created, &doc.content_type, &doc.bytes);
                // The base64 document is set aside while `_summary`/`_elements` cut the
                // resource, so that it is wiped whether or not the answer keeps it.
                let mut data = resource["data"].take();
                medgate_fhir::subset::subset(&mut resource, rep.summary, rep.elements.as_deref());
                if let Some(slot) = resource.get_mut("data") {
                    *slot = data;
                } else {
                    super::representation::wipe_strings(&mut data);
                }
                self.fhir_wiped(200, resource, rep)
            }
        };
        Ok(with_validators(r, &got.created))
    }
}

fn with_validators(mut r: Resp, created: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(&etag(BINARY_VERSION)) {
        r.headers_mut().insert(ETAG, v);
    }
    if let Some(v) = http_date(created) {
        r.headers_mut().insert(LAST_MODIFIED, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly() {
        for yes in [r#"W/"1""#, r#""1""#, "*", r#""7", W/"1""#] {
            assert!(names_version(yes, "1"), "{yes}");
        }
        for no in [r#"W/"2""#, "1", r#"W/1"#, ""] {
            assert!(!names_version(no, "1"), "{no}");
        }
    }

    #[test]
    fn last_modified_is_an_http_date() {
        assert_eq!(http_date("2026-01-02T03:04:05.123Z").expect("date"), "Fri, 02 Jan 2026 03:04:05 GMT");
        assert!(http_date("yesterday").is_none());
    }
}
