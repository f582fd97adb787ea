//! The search interactions: `GET [type]?...` and `POST [type]/_search` (form body), as MHD
//! Document Consumers send them (ITI-66, ITI-67), for DocumentReference, List, AuditEvent and
//! Consent; `Prefer: handling=strict` turns an unsupported parameter into a 400.
//!
//! Boundary: the HTTP request in, a parsed [`medgate_fhir::search::Query`] to the gateway, the
//! searchset Bundle out. Query strings are never logged (they hold patient identifiers).

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use medgate_fhir::search::{decode_pairs, parse_query, ResourceSearch};
use medgate_fhir::FhirError;

use super::representation::{check_json, rep_params};
use super::{body, caller, header, Api, Resp};
use crate::tls::ClientIdentity;
use crate::GatewayError;

/// Does a `Prefer` header ask for strict handling (RFC 7240, R4 search.html#errors)?
pub(super) fn prefers_strict(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| p.split([',', ';']).any(|pref| pref.trim().eq_ignore_ascii_case("handling=strict")))
}

impl Api {
    /// Runs a search on `search`'s resource type.
    pub(super) async fn find(&self, search: &'static ResourceSearch, client: &ClientIdentity, req: Request<Incoming>) -> Result<Resp, GatewayError> {
        let caller = caller(&req, client)?;
        let accept = header(&req, "accept")?.map(str::to_owned);
        let strict = prefers_strict(header(&req, "prefer")?);
        let mut pairs = decode_pairs(req.uri().query().unwrap_or(""))?;
        if req.method() == Method::POST {
            let ct = header(&req, "content-type")?.unwrap_or("");
            if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                return Err(FhirError::UnsupportedMediaType("send the search parameters as application/x-www-form-urlencoded".into()).into());
            }
            let bytes = body(req, self.body_limit(), self.body_timeout).await?;
            let text = std::str::from_utf8(&bytes).map_err(|_| FhirError::BadParameter("the form body is not UTF-8".into()))?;
            pairs.extend(decode_pairs(text)?);
        }
        let rep = rep_params(&pairs, false)?;
        check_json(&rep, accept.as_deref())?;
        let query = parse_query(search, &pairs, strict)?;
        let gw = &self.gateway;
        let bundle = match search.resource_type {
            "AuditEvent" => gw.audit(&caller, &query).await?,
            "Consent" => gw.consents(&caller, &query).await?,
            "List" => gw.search_lists(&caller, &query).await?,
            _ => gw.search(&caller, &query).await?,
        };
        let mut r = self.fhir(200, bundle, &rep);
        if strict {
            r.headers_mut().insert("preference-applied", HeaderValue::from_static("handling=strict"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_handling_is_read_from_prefer() {
        assert!(prefers_strict(Some("handling=strict")));
        assert!(prefers_strict(Some("return=minimal, Handling=Strict")));
        assert!(!prefers_strict(Some("handling=lenient")));
        assert!(!prefers_strict(None));
    }
}
