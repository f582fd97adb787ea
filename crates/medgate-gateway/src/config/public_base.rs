//! `his.public_base_url`: the absolute https URL clients reach the FHIR interface at, its
//! default, and its check.

use super::His;

impl His {
    /// The public base URL without a trailing slash: `public_base_url`, or the default.
    pub fn public_base(&self) -> String {
        match &self.public_base_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let port = self.listen.port();
                let host = match self.listen.ip() {
                    ip if ip.is_unspecified() => std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| "localhost".into()),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    ip => ip.to_string(),
                };
                format!("https://{host}:{port}")
            }
        }
    }
}

/// Why `url` cannot be a public base URL: an absolute `https://host[:port][/path]`, with no
/// query, fragment, user information or whitespace.
pub(super) fn check(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err("must be an absolute https URL, e.g. \"https://medgate.hospital.example:8443\" (clients reach the FHIR interface over TLS)");
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains(['?', '#']) {
        return Err("must not contain whitespace, a query (?) or a fragment (#)");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host after https:// (and no user information)");
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) if !host.is_empty() => match rest {
                "" => None,
                r => Some(r.strip_prefix(':').unwrap_or("x")),
            },
            _ => return Err("has an IPv6 host that is not closed by ']'"),
        },
        None => authority.split_once(':').map(|(_, p)| p),
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("has a port that is not a number between 1 and 65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    #[test]
    fn the_public_base_url_is_an_absolute_https_url() {
        for good in ["https://medgate.example.org", "https://medgate.example.org:8443/fhir/", "https://10.0.0.1:8443", "https://[::1]:8443/fhir"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in ["http://medgate.example.org", "medgate.example.org", "https://", "https:///fhir", "https://a b", "https://h/fhir?x=1", "https://h#f", "https://u@h", "https://h:0", "https://h:99999", "https://h:x", "https://[::1"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        let p = Config::parse(
            r#"
            [gateway]
            hospital_id = "a"
            state_directory = "/var/lib/medgate"
            [hsm]
            module = "/nonexistent/module.so"
            token_label = "medgate"
            [his]
            listen = "127.0.0.1:8443"
            certificate = "/x"
            client_ca = "/y"
            public_base_url = "http://medgate.example.org"
            "#,
            Path::new("/etc/medgate/medgate.toml"),
        )
        .expect_err("refused")
        .problems;
        let reason = p.iter().find(|x| x.key == "his.public_base_url").map(|x| x.reason.clone()).unwrap_or_default();
        assert!(reason.contains("https"), "{p:?}");
    }

    #[test]
    fn the_public_base_defaults_to_the_listen_address() {
        let his = |listen: &str, url: Option<&str>| His {
            listen: listen.parse().expect("addr"),
            certificate: "/x".into(),
            client_ca: "/y".into(),
            crl: Vec::new(),
            max_body_bytes: 1024,
            request_timeout_seconds: 30,
            public_base_url: url.map(str::to_owned),
        };
        assert_eq!(his("10.1.2.3:8443", None).public_base(), "https://10.1.2.3:8443");
        assert_eq!(his("[::1]:8443", None).public_base(), "https://[::1]:8443");
        assert_eq!(his("10.1.2.3:8443", Some("https://gw.example/fhir/")).public_base(), "https://gw.example/fhir");
        let any = his("0.0.0.0:8443", None).public_base();
        assert!(any.starts_with("https://") && any.ends_with(":8443") && !any.contains("0.0.0.0"), "{any}");
    }
}
