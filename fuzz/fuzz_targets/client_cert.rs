//! The certificate fields medgate reads after the TLS handshake: the HIS system and role (CN,
//! OU) of a client certificate, a peer gateway's hospital id (O), and what operators are shown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medgate_gateway::tls::ClientIdentity;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = ClientIdentity::from_der(data) {
        assert!(!(id.may_write() && !id.may_read()), "a writer that may not read");
    }
    let _ = medgate_gateway::peer::organisation(data);
    let _ = medgate_gateway::pki::describe_certificate(data);
});
